/** Every CLI command: the host operator's and the user's. */
import type { Command } from './command.ts'
import { hostCommands } from './host-commands.ts'
import { userCommands } from './user-commands.ts'

export { commandHelp, parseCommand, type Command, type Io, type Globals } from './command.ts'

export const commands: Command[] = [...hostCommands, ...userCommands]
