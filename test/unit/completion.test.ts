/**
 * Shell completion (node/cli/completion.ts): the bash script, run by a real bash with the words a
 * user typed, offers the commands, subcommands and options of the command table; zsh gets the
 * same through bashcompinit; fish gets one `complete` line per word and option.
 */
import { describe, it, expect } from 'vitest'
import { execFileSync } from 'node:child_process'
import { completionScript } from '../../node/cli/completion.ts'
import { commands, type Io } from '../../node/cli/commands.ts'
import type { ApiClient } from '../../node/api/client.ts'

/** What bash offers after `words` (the last one being completed). */
function complete (words: string[]): string[] {
  const script = completionScript('bash', commands)
  const arr = words.map(w => `'${w}'`).join(' ')
  const out = execFileSync('bash', ['-c', `${script}\nCOMP_WORDS=(${arr}); COMP_CWORD=${words.length - 1}; _picocloud; printf '%s\\n' "\${COMPREPLY[@]}"`], { encoding: 'utf8' })
  return out.split('\n').filter(Boolean).sort()
}

describe('shell completion', () => {
  it('bash completes commands, subcommands and options, also after global options', () => {
    expect(complete(['picocloud', 'v'])).toEqual(['vm'])
    expect(complete(['picocloud', 'vm', 'c'])).toEqual(['console', 'create'])
    expect(complete(['picocloud', 'vm', 'create', 'web', '--im'])).toEqual(['--image'])
    expect(complete(['picocloud', '--json', 'vm', 'li'])).toEqual(['list'])
    expect(complete(['picocloud', '--socket', '/run/x.sock', 'host', 'd'])).toEqual(['drain'])
    expect(complete(['picocloud', 'hosts', '--j'])).toEqual(['--json'])
    expect(complete(['picocloud', 'vm', 'list', '-'])).toEqual(expect.arrayContaining(['--output', '--selector', '--all', '--json']))
  })

  it('every command word and option of the table is in the bash and fish scripts', () => {
    const bash = completionScript('bash', commands)
    const fish = completionScript('fish', commands)
    for (const c of commands) {
      for (const w of c.name.split(' ')) { expect(bash, c.name).toContain(w); expect(fish, c.name).toContain(`'${w}'`) }
      for (const o of Object.keys(c.options ?? {})) { expect(bash, `${c.name} --${o}`).toContain(`--${o}`); expect(fish, `${c.name} --${o}`).toContain(`-l ${o}`) }
    }
    expect(completionScript('zsh', commands)).toMatch(/bashcompinit[\s\S]*complete -F _picocloud picocloud/)
  })

  it('an unknown shell is a usage error', async () => {
    const c = commands.find(x => x.name === 'completion')
    const io: Io = { out: () => {}, err: () => {} }
    await expect(c?.run({ values: {}, positionals: ['powershell'], g: { socket: '/nonexistent', json: false }, io, api: {} as ApiClient }))
      .rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/bash, zsh, fish/) })
  })
})
