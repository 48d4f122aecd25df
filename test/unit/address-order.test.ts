import { describe, it, expect } from 'vitest'
import { addressRank, routableFirst } from '../../node/mesh/address-order.ts'

describe('the order a host lists its addresses in', () => {
  it('puts public first, then private, link-local, loopback; keeps the order within a rank', () => {
    const listed = ['/ip4/127.0.0.1/tcp/9777', '/ip6/::1/tcp/9777', '/ip4/10.0.0.5/tcp/9777', '/ip6/fe80::1/tcp/9777',
      '/ip4/192.0.2.7/tcp/9777', '/ip6/fd12::3/tcp/9777', '/ip6/2001:db8::7/tcp/9777', '/ip4/172.20.1.1/tcp/9777', '/dns4/example.org/tcp/9777']
    expect(routableFirst(listed)).toEqual(['/ip4/192.0.2.7/tcp/9777', '/ip6/2001:db8::7/tcp/9777', '/ip4/10.0.0.5/tcp/9777', '/ip6/fd12::3/tcp/9777',
      '/ip4/172.20.1.1/tcp/9777', '/ip6/fe80::1/tcp/9777', '/ip4/127.0.0.1/tcp/9777', '/ip6/::1/tcp/9777', '/dns4/example.org/tcp/9777'])
  })
  it('ranks the edges of the private ranges right', () => {
    expect(addressRank('/ip4/172.15.0.1/tcp/1')).toBe(0)
    expect(addressRank('/ip4/172.16.0.1/tcp/1')).toBe(1)
    expect(addressRank('/ip4/172.32.0.1/tcp/1')).toBe(0)
    expect(addressRank('/ip4/100.64.0.1/tcp/1')).toBe(1)
    expect(addressRank('/ip4/169.254.1.1/tcp/1')).toBe(2)
    expect(addressRank('/ip4/0.0.0.0/tcp/1')).toBe(3)
    expect(addressRank('/ip4/not-an-ip/tcp/1')).toBe(4)
  })
})

describe('addresses a host announces', () => {
  it('never those of its own picocloud interfaces (network bridges, WireGuard)', async () => {
    const { picocloudInterfaceIps, withoutIps } = await import('../../node/mesh/address-order.ts')
    const ips = picocloudInterfaceIps({ eth0: [{ address: '192.0.2.7' }], 'pc-br1a2b3c': [{ address: '10.9.0.254' }, { address: 'fd09::1' }], 'pc-wg0': [{ address: '10.255.0.3' }], lo: [{ address: '127.0.0.1' }] })
    expect([...ips].sort()).toEqual(['10.255.0.3', '10.9.0.254', 'fd09::1'])
    expect(withoutIps(['/ip4/192.0.2.7/tcp/9777', '/ip4/10.9.0.254/tcp/9777', '/ip6/fd09::1/tcp/9777', '/ip4/10.255.0.3/tcp/9777', '/dns4/x/tcp/1'], ips))
      .toEqual(['/ip4/192.0.2.7/tcp/9777', '/dns4/x/tcp/1'])
  })
})
