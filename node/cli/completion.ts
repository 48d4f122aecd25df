/**
 * Shell completion generated from the command table: `picocloud completion bash|zsh|fish` prints
 * a script that completes command words and each command's options (no values: those are names
 * and files the shell completes as usual).
 *
 * @example
 * eval "$(picocloud completion bash)"     # in ~/.bashrc
 * picocloud completion fish > ~/.config/fish/completions/picocloud.fish
 */
import type { Command } from './command.ts'

export const SHELLS = ['bash', 'zsh', 'fish'] as const
export type Shell = typeof SHELLS[number]

const GLOBAL = ['--socket', '--json', '--help']

interface Tree { top: string[], subs: Map<string, string[]>, options: Map<string, string[]> }

function tree (commands: readonly Command[]): Tree {
  const subs = new Map<string, string[]>()
  const options = new Map<string, string[]>()
  for (const c of commands) {
    const [first, second] = c.name.split(' ')
    if (second !== undefined) subs.set(first, [...(subs.get(first) ?? []), second])
    else if (!subs.has(first)) subs.set(first, subs.get(first) ?? [])
    options.set(c.name, Object.keys(c.options ?? {}).map(o => `--${o}`))
  }
  return { top: [...subs.keys()], subs, options }
}

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`

function bash (t: Tree): string {
  const subCases = [...t.subs].filter(([, s]) => s.length > 0).map(([w, s]) => `    ${w}) subs=${quote(s.join(' '))} ;;`).join('\n')
  const optCases = [...t.options].map(([c, o]) => `    ${quote(c)}) opts=${quote(o.join(' '))} ;;`).join('\n')
  return `# picocloud completion (bash): eval "$(picocloud completion bash)"
_picocloud () {
  local cur=\${COMP_WORDS[COMP_CWORD]} words=() i w skip=0
  # The command words typed so far, without options (and the value of --socket).
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    if [ $skip = 1 ]; then skip=0; continue; fi
    case "$w" in --socket) skip=1 ;; -*) ;; *) words+=("$w") ;; esac
  done
  local subs='' opts=''
  if [ \${#words[@]} -eq 0 ]; then
    COMPREPLY=($(compgen -W ${quote([...t.top, ...GLOBAL].join(' '))} -- "$cur")); return
  fi
  case "\${words[0]}" in
${subCases}
  esac
  if [ -n "$subs" ] && [ \${#words[@]} -eq 1 ]; then
    COMPREPLY=($(compgen -W "$subs" -- "$cur")); return
  fi
  local cmd=\${words[0]}
  [ -n "$subs" ] && cmd="\${words[0]} \${words[1]}"
  case "$cmd" in
${optCases}
  esac
  if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts ${GLOBAL.join(' ')}" -- "$cur")); return; fi
  COMPREPLY=($(compgen -f -- "$cur"))
}
complete -F _picocloud picocloud
`
}

function fish (t: Tree, commands: readonly Command[]): string {
  const lines = ['# picocloud completion (fish): picocloud completion fish > ~/.config/fish/completions/picocloud.fish']
  lines.push(`complete -c picocloud -l socket -r -d 'daemon socket'`, `complete -c picocloud -l json -d 'print JSON for scripts'`, `complete -c picocloud -l help -d 'help'`)
  for (const w of t.top) {
    const c = commands.find(x => x.name === w) ?? commands.find(x => x.name.startsWith(`${w} `))
    lines.push(`complete -c picocloud -f -n __fish_use_subcommand -a ${quote(w)} -d ${quote(t.subs.get(w)?.length === 0 ? (c?.summary ?? '') : `${w} commands`)}`)
  }
  for (const [w, subs] of t.subs) {
    if (subs.length === 0) continue
    for (const s of subs) {
      const c = commands.find(x => x.name === `${w} ${s}`)
      lines.push(`complete -c picocloud -f -n ${quote(`__fish_seen_subcommand_from ${w}; and not __fish_seen_subcommand_from ${subs.join(' ')}`)} -a ${quote(s)} -d ${quote(c?.summary ?? '')}`)
    }
  }
  for (const c of commands) {
    const [w, s] = c.name.split(' ')
    const cond = s === undefined ? `__fish_seen_subcommand_from ${w}` : `__fish_seen_subcommand_from ${w}; and __fish_seen_subcommand_from ${s}`
    for (const [o, spec] of Object.entries(c.options ?? {})) {
      lines.push(`complete -c picocloud -n ${quote(cond)} -l ${o}${spec.type === 'string' ? ' -r' : ''} -d ${quote(c.optionHelp?.[o] ?? '')}`)
    }
  }
  return lines.join('\n') + '\n'
}

export function completionScript (shell: Shell, commands: readonly Command[]): string {
  const t = tree(commands)
  if (shell === 'fish') return fish(t, commands)
  const script = bash(t)
  // zsh runs the bash function through its bash-compatibility layer.
  return shell === 'zsh' ? `# picocloud completion (zsh): eval "$(picocloud completion zsh)"\nautoload -U +X bashcompinit && bashcompinit\n${script}` : script
}
