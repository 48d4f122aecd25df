/** Every CLI command: the host operator's and the user's. */
import type { Command } from './command.ts'
import { hostCommands } from './host-commands.ts'
import { userCommands } from './user-commands.ts'
import { completionScript, SHELLS, type Shell } from './completion.ts'
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'

export { commandHelp, parseCommand, type Command, type Io, type Globals } from './command.ts'

export const commands: Command[] = [...hostCommands, ...userCommands, {
  name: 'completion',
  summary: 'print a shell completion script (bash, zsh or fish), made from these commands',
  usage: 'picocloud completion bash|zsh|fish',
  description: 'bash: add `eval "$(picocloud completion bash)"` to ~/.bashrc; zsh: `eval "$(picocloud completion zsh)"` in ~/.zshrc; fish: `picocloud completion fish > ~/.config/fish/completions/picocloud.fish`. No daemon is needed.',
  positionals: [1, 1],
  run: async ({ positionals, io }) => {
    const shell = positionals[0]
    if (!(SHELLS as readonly string[]).includes(shell)) throw new PicocloudError(ErrorCode.Usage, `completion for ${JSON.stringify(shell)} is not made: choose ${SHELLS.join(', ')}`)
    io.out(completionScript(shell as Shell, commands).trimEnd())
  }
}]
