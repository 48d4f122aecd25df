import { describe, it, expect } from 'vitest'
import { seedFiles } from '../../node/compute/hypervisor/seed.ts'

describe('cloud-init NoCloud seed', () => {
  it('names the VM, installs the owner\'s SSH keys and configures each NIC by MAC (DHCP or the static address)', () => {
    const f = seedFiles(
      { id: 'ab'.repeat(32), name: 'web', nics: [{ net: 'lan' }, { net: 'dmz', ip: '10.0.0.5/24' }], spec: { sshKeys: ['ssh-ed25519 AAAAC3Nza alice@laptop'] } },
      { nics: [{ mac: '52:54:00:00:00:01', tap: 'pc-tabababab0' }, { mac: '52:54:00:00:00:02', tap: 'pc-tabababab1' }] }
    )
    expect(f['meta-data']).toBe(`instance-id: "${'ab'.repeat(32)}"\nlocal-hostname: "web"\n`)
    expect(f['user-data'].split('\n')[0]).toBe('#cloud-config')
    expect(f['user-data']).toContain('ssh_authorized_keys:\n  - "ssh-ed25519 AAAAC3Nza alice@laptop"')
    expect(f['user-data']).toContain('ssh_pwauth: false')
    expect(f['network-config']).toContain('macaddress: "52:54:00:00:00:01"\n    set-name: "eth0"\n    dhcp4: true')
    expect(f['network-config']).toContain('macaddress: "52:54:00:00:00:02"\n    set-name: "eth1"\n    addresses: ["10.0.0.5/24"]')
  })

  it('quotes every value, so a name or key cannot inject YAML', () => {
    const f = seedFiles({ id: 'x', name: 'a\nroot: true', nics: [], spec: { sshKeys: ['k"\n- evil'] } }, { nics: [] })
    expect(f['meta-data']).toContain('local-hostname: "a\\nroot: true"')
    expect(f['user-data']).toContain('- "k\\"\\n- evil"')
  })
})
