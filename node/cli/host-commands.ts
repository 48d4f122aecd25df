/**
 * The host operator's commands (daemon, init, admit, join, expel, status, hosts…): each declares
 * its usage, options and help, parses its own arguments and talks to the daemon through the local
 * API. `--json` prints the API's JSON unchanged.
 */
import { PicocloudError, ErrorCode } from '../../protocol/errors.ts'
import type { HostView, IdView, StatusView, HistoryEntry } from '../../protocol/api.ts'
import type { DrainOutcome } from '../control/index.ts'
import { table, ago, short, line } from './output.ts'
import { print, type Command } from './command.ts'

const statusText = (s: StatusView): string => {
  const lines = [
    line`host      ${s.name}  ${s.peerId}`,
    line`version   ${s.version}, up ${s.uptimeSeconds}s`,
    line`mesh      ${s.mesh === null ? 'none (run `picocloud init` or `picocloud join <address>`)' : `${s.mesh.name} (${s.mesh.id}), ${s.mesh.members} members, founder ${short(s.mesh.founder)}`}`,
    line`state     ${s.state.changes} changes, ${s.state.pending} pending, ${s.state.logBytes} bytes, heads ${s.state.heads.map(h => h.slice(0, 12)).join(' ') || '-'}`,
    line`listen    ${s.addresses.join(' ') || '-'}`
  ]
  if (s.expelled !== null) lines.push(line`EXPELLED  by ${s.expelled.by} at ${s.expelled.at}: ${s.expelled.reason || 'no reason given'}`)
  lines.push('', `peers connected: ${s.peers.length}`)
  if (s.peers.length > 0) lines.push(table(['PEER', 'NAME', 'ADDRESS', 'DIR'], s.peers.map(p => [p.peerId, p.name, p.address, p.direction])))
  const n = s.network
  if (n !== undefined) {
    lines.push('', n.mode === 'none'
      ? line`network   none: ${n.reason ?? 'no data plane'}`
      : line`network   ${n.interface} port ${n.listenPort}${n.backend !== undefined ? ` (${n.backend})` : ''}, overlay ${n.overlayAddress ?? '-'}, MTU ${n.mtu ?? '-'}, endpoints ${n.endpoints.join(' ') || '-'}`)
    if (n.lastPass !== null) lines.push(line`          last pass ${n.lastPass.at}: ${n.lastPass.error ?? `${n.lastPass.steps} steps`}; networks here: ${n.networks.map(x => `${x.name} (VNI ${x.vni}, ${x.fdb} peers)`).join(', ') || 'none'}`)
    for (const p of n.problems) lines.push(line`          problem: ${p}`)
    if (n.peers.length > 0) lines.push(table(['WG PEER', 'NAME', 'ENDPOINT', 'LAST HANDSHAKE', 'RX', 'TX'], n.peers.map(p => [short(p.peerId), p.name, p.endpoint ?? '-', p.latestHandshake ?? 'never', String(p.rxBytes), String(p.txBytes)])))
  }
  if (s.penalties.length > 0) {
    lines.push('', 'penalised peers:')
    lines.push(table(['PEER', 'SCORE', 'LAST OFFENCE'], s.penalties.map(p => [p.peerId, String(p.score), p.offences.at(-1)?.reason ?? ''])))
  }
  return lines.join('\n')
}

/** One line per host whose feed holds malformed fields or acts that do not count (all in --json). */
function problemsNote (hosts: HostView[]): string {
  const bad = hosts.filter(h => (h.problems ?? []).length > 0)
  if (bad.length === 0) return ''
  return '\n' + bad.map(h => `${h.name || h.peerId}: ${h.problems.length} problem(s) in its record, ignored (first: ${h.problems[0]}); see \`picocloud hosts --json\``).join('\n')
}

/** One event as a line a person reads: time, type, then `key=value` (lists by their length). */
export function eventLine (e: Record<string, unknown>): string {
  const value = (v: unknown): string => {
    if (Array.isArray(v)) return v.length === 1 ? value(v[0]) : `[${v.length}]`
    if (v !== null && typeof v === 'object') { const j = JSON.stringify(v); return j.length > 60 ? `${j.slice(0, 57)}…` : j }
    const t = String(v)
    return /^12D3KooW/.test(t) || /^[0-9A-F]{40}$/.test(t) ? short(t) : /^[0-9a-f]{64}$/.test(t) ? t.slice(0, 12) : t
  }
  const time = typeof e.time === 'string' ? e.time.replace(/^.*T/, '').replace(/Z$/, '') : String(e.time)
  const rest = Object.entries(e).filter(([k]) => k !== 'time' && k !== 'type').map(([k, v]) => `${k}=${value(v)}`).join(' ')
  return line`${time}  ${String(e.type)}  ${rest}`
}

export const hostCommands: Command[] = [
  {
    name: 'daemon',
    summary: 'run the picocloud daemon on this host',
    usage: 'picocloud daemon [--config FILE] [--state DIR] [--socket PATH] [--listen MULTIADDR]... [--announce MULTIADDR]... [--name NAME] [--metrics-listen ADDR:PORT] [--image-listen ADDR:PORT]',
    description: 'Runs in the foreground and logs structured lines to stderr. Paths come from the flags, then PICOCLOUD_CONFIG / PICOCLOUD_STATE / PICOCLOUD_SOCKET, then the config file (default /etc/picocloud/config.toml), then the defaults (/var/lib/picocloud, /run/picocloud/picocloud.sock, /ip4/0.0.0.0/tcp/9777).',
    options: {
      config: { type: 'string' },
      state: { type: 'string' },
      listen: { type: 'string', multiple: true },
      announce: { type: 'string', multiple: true },
      name: { type: 'string' },
      'metrics-listen': { type: 'string' },
      'image-listen': { type: 'string' }
    },
    optionHelp: {
      config: 'TOML config file (default /etc/picocloud/config.toml; env PICOCLOUD_CONFIG)',
      state: 'state directory with keys and the replicated state (default /var/lib/picocloud; env PICOCLOUD_STATE)',
      listen: 'libp2p listen address, repeatable (default /ip4/0.0.0.0/tcp/9777)',
      announce: 'address other hosts should dial, repeatable (behind NAT)',
      name: 'this host\'s name (default: the machine\'s hostname)',
      'metrics-listen': 'serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9778 (default: off; "" turns off what the config file sets)',
      'image-listen': 'serve image bytes to peers over a side TCP port, encrypted (default :9779; "" turns it off: images then go over libp2p only)'
    },
    run: async ({ values, g }) => {
      const { runDaemon } = await import('../daemon.ts')
      await runDaemon({ config: values.config, state: values.state, socket: g.socket, listen: values.listen, announce: values.announce, name: values.name, metricsListen: values['metrics-listen'], imageListen: values['image-listen'] })
    }
  },
  {
    name: 'init',
    summary: 'start a new mesh with this host as its founder',
    usage: 'picocloud init [--name MESH-NAME]',
    options: { name: { type: 'string' } },
    optionHelp: { name: 'name of the mesh (default: <host name>-mesh)' },
    run: async ({ values, g, io, api }) => {
      const s = await api.call<StatusView>('POST', '/v1/init', { name: values.name })
      print(io, g, s, () => line`mesh ${s.mesh?.name ?? ''} (${s.mesh?.id ?? ''}) founded by this host.` + '\nNext: on a new host run `picocloud id`, then here `picocloud admit <its peer key>`.')
    }
  },
  {
    name: 'id',
    summary: 'print this host\'s peer key and addresses (what a newcomer hands to a member)',
    usage: 'picocloud id',
    run: async ({ g, io, api }) => {
      const id = await api.call<IdView>('GET', '/v1/id')
      const status = g.json ? undefined : await api.call<{ mesh?: { id: string, name?: string } | null }>('GET', '/v1/status')
      const inMesh = status?.mesh !== undefined && status.mesh !== null
      print(io, g, id, () => [
        `peer key:  ${id.peerId}`,
        'addresses:',
        ...id.addresses.map(a => `  ${a}`),
        ...(inMesh
          ? ['', `This host is in mesh ${status?.mesh?.name ?? status?.mesh?.id ?? ''}: a newcomer joins through one of the addresses above, once admitted (\`picocloud admit PEER\`).`]
          : ['', `To join a mesh: hand the peer key to a member's operator (\`picocloud admit ${id.peerId}\`),`,
              'then run `picocloud join <one of the member\'s addresses>` here.'])
      ].join('\n'))
    }
  },
  {
    name: 'admit',
    summary: 'admit a host into the mesh by its peer key (run on a member)',
    usage: 'picocloud admit PEER-KEY [--name NAME]',
    positionals: [1, 1],
    options: { name: { type: 'string' } },
    optionHelp: { name: 'a name for the new host until it publishes its own' },
    run: async ({ values, positionals, g, io, api }) => {
      const r = await api.call<{ peerId: string, changed: boolean }>('POST', '/v1/admit', { peerId: positionals[0], name: values.name })
      print(io, g, r, () => r.changed
        ? `admitted ${r.peerId}.\nNext, on that host: picocloud join <an address from \`picocloud id\` here>`
        : `${r.peerId} is already a member; nothing changed.`)
    }
  },
  {
    name: 'join',
    summary: 'join a mesh through a member that admitted this host (run on the newcomer)',
    usage: 'picocloud join MEMBER-ADDRESS',
    description: 'MEMBER-ADDRESS is a multiaddr ending in /p2p/<peer id>, as `picocloud id` prints it on the member.',
    positionals: [1, 1],
    run: async ({ positionals, g, io, api }) => {
      const s = await api.call<StatusView>('POST', '/v1/join', { address: positionals[0] })
      print(io, g, s, () => line`joined mesh ${s.mesh?.name ?? ''} (${s.mesh?.id ?? ''}) with ${s.mesh?.members ?? 0} members.`)
    }
  },
  {
    name: 'expel',
    summary: 'expel a host from the mesh (founder or a named expeller only)',
    usage: 'picocloud expel PEER [--reason TEXT]',
    description: 'PEER is a peer id or a member\'s unique name. Every member disconnects it and refuses it until it is admitted again.',
    positionals: [1, 1],
    options: { reason: { type: 'string' } },
    optionHelp: { reason: 'why, recorded in the state for everyone to read' },
    run: async ({ values, positionals, g, io, api }) => {
      const r = await api.call<{ peerId: string, changed: boolean }>('POST', '/v1/expel', { peer: positionals[0], reason: values.reason })
      print(io, g, r, () => r.changed ? `expelled ${r.peerId}.` : `${r.peerId} was already expelled; nothing changed.`)
    }
  },
  {
    name: 'policy',
    summary: 'show or set who may admit and who may expel hosts (set: the mesh founder only)',
    usage: 'picocloud policy [--admit any-member|expellers] [--expeller PEER]... [--no-expellers]',
    description: 'The founder always may expel and re-admit. --expeller names other hosts (peer id or name) that may too; it replaces the list. With --admit expellers, only the founder and the expellers may admit newcomers.',
    options: { admit: { type: 'string' }, expeller: { type: 'string', multiple: true }, 'no-expellers': { type: 'boolean' } },
    optionHelp: { admit: 'any-member (default) or expellers', expeller: 'a host that may expel (repeatable; replaces the list)', 'no-expellers': 'only the founder may expel' },
    run: async ({ values, g, io, api }) => {
      const body: Record<string, unknown> = {}
      if (values.admit !== undefined) body.admit = values.admit
      if (values.expeller !== undefined) body.expellers = values.expeller
      if (values['no-expellers'] === true) body.expellers = []
      const s = Object.keys(body).length === 0
        ? await api.call<StatusView>('GET', '/v1/status')
        : await api.call<StatusView>('POST', '/v1/mesh/policy', body)
      if (s.mesh === null) throw new PicocloudError(ErrorCode.NotInMesh, 'this host is not in a mesh yet')
      print(io, g, s.mesh.policy, () => line`admit:     ${s.mesh?.policy.admit ?? ''}` + '\n' + line`expellers: ${s.mesh?.policy.expellers.join(' ') ?? ''} (the first is the founder)`)
    }
  },
  {
    name: 'status',
    summary: 'this host, its mesh, connected peers and the state',
    usage: 'picocloud status',
    run: async ({ g, io, api }) => {
      const s = await api.call<StatusView>('GET', '/v1/status')
      print(io, g, s, () => statusText(s))
    }
  },
  {
    name: 'host drain',
    summary: 'take this host out of service (host operator): no new VMs, its --ha restart VMs move to other hosts',
    usage: 'picocloud host drain [--reason TEXT]',
    description: 'Each --ha restart VM here is stopped at once and started by the host next in its ranking, from its image (its disk does not move). --ha none VMs stay, and say so: they would move without their disk. Refused, with nothing changed, when a --ha restart VM here has no other host that is up and may take it. `picocloud host undrain` lifts it.',
    options: { reason: { type: 'string' } },
    optionHelp: { reason: 'why (shown to the other hosts)' },
    run: async ({ values, g, io, api }) => {
      const r = await api.call<DrainOutcome>('POST', '/v1/host/drain', values.reason === undefined ? {} : { reason: values.reason })
      io.out(g.json
        ? JSON.stringify(r, null, 2)
        : ['this host is drained: no new VMs come here (`picocloud host undrain` lifts it)',
            ...r.moving.map(v => `  ${v.name}: moves (to ${v.to}, as this host sees it now)`),
            ...r.staying.map(v => `  ${v.name}: stays (${v.why})`)].join('\n'))
    }
  },
  {
    name: 'host undrain',
    summary: 'put a drained host back in service (host operator): new VMs may come here again',
    usage: 'picocloud host undrain',
    run: async ({ g, io, api }) => {
      const r = await api.call<{ drained: false }>('POST', '/v1/host/undrain', {})
      io.out(g.json ? JSON.stringify(r) : 'this host takes new VMs again (VMs that moved away stay where they are)')
    }
  },
  {
    name: 'hosts',
    summary: 'the hosts of the mesh, with liveness',
    usage: 'picocloud hosts',
    run: async ({ g, io, api }) => {
      const hosts = await api.call<HostView[]>('GET', '/v1/hosts')
      print(io, g, hosts, () => hosts.length === 0
        ? 'no hosts: this host is not in a mesh yet'
        : table(['NAME', 'PEER', 'REACHABLE', 'LAST SEEN', 'VMS', 'NETWORKS', 'ADDRESS'], hosts.map(h => [
          h.name + (h.self ? ' (this host)' : ''), h.peerId, (h.reachable ? 'yes' : 'no') + ((h.lost ?? null) !== null ? ' (lost)' : (h.declaredBy ?? []).length > 0 ? ` (declared by ${h.declaredBy.length})` : '') + ((h.drained ?? null) !== null ? ' (drained)' : ''), ago(h.lastSeen),
          h.hypervisor ?? '-', h.networks === null ? '-' : h.networks ? 'yes' : 'no', h.addresses[0] ?? '-'
        ])) + problemsNote(hosts))
    }
  },
  {
    name: 'history',
    summary: 'the audit log of the replicated state (every change, who made it)',
    usage: 'picocloud history',
    run: async ({ g, io, api }) => {
      const h = await api.call<HistoryEntry[]>('GET', '/v1/history')
      print(io, g, h, () => table(['TIME', 'HOST', 'PEER', 'CHANGE', 'WHAT', 'USER'], h.map(e => [
        new Date(e.time * 1000).toISOString().replace('.000Z', 'Z'), e.authorName ?? '-', short(e.author), e.hash.slice(0, 12), e.message ?? '', e.issuer === undefined ? '' : short(e.issuer)
      ])))
    }
  },
  {
    name: 'demo',
    summary: 'three hosts on this machine, narrated: join, trust, placement, failure (cleans up after itself)',
    usage: 'picocloud demo',
    description: 'Runs what this machine can: the control plane always; real VMs when run as root with QEMU and the boot-disk tools installed (sudo bash .ci/install-system-packages). Missing parts are named and skipped.',
    run: async () => {
      const { runDemo } = await import('../demo/index.ts')
      const code = await runDemo()
      if (code !== 0) throw new PicocloudError('DEMO_FAILED', 'the demo did not finish cleanly (see above)')
    }
  },
  {
    name: 'events',
    summary: 'follow the daemon\'s events (state changes, peers, rejections) as they happen',
    usage: 'picocloud events',
    run: async ({ g, io, api }) => {
      const ac = new AbortController()
      process.once('SIGINT', () => ac.abort())
      await api.events(e => {
        io.out(g.json ? JSON.stringify(e) : eventLine(e))
      }, ac.signal)
    }
  }
]

