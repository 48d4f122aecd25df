import { describe, it, expect } from 'vitest'
import { validateBody, vmResources, REQUEST_KINDS, type RequestKind } from '../../protocol/requests.ts'
import { parseCidr, parseIpv6 } from '../../protocol/validate.ts'
import { PicocloudError } from '../../protocol/errors.ts'

const SSH = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm3xQ3wZ5mH7x2gR0a0q6b2yPZr7m4u2h1V0X9dYc7N ada@laptop'
const PEER = '12D3KooWGzBq8kTcKkYy6gXJ5Xz1oTnhYJkGHuTBeZ4ZZz9Qf3Zp'

function rejects (kind: RequestKind, body: unknown, field: RegExp): void {
  let err: unknown
  try {
    validateBody(kind, body)
  } catch (e) {
    err = e
  }
  expect(err, JSON.stringify(body)).toBeInstanceOf(PicocloudError)
  expect((err as PicocloudError).code).toBe('BAD_BODY')
  expect((err as PicocloudError).message).toMatch(field)
}

describe('vm.create body', () => {
  it('fills defaults and keeps what was given', () => {
    expect(validateBody('vm.create', { name: 'web', image: 'debian-12', type: 'small' })).toEqual({
      name: 'web', image: 'debian-12', type: 'small', diskGiB: 10, arch: 'x86_64', nics: [], labels: {}, sshKeys: [], restart: 'always'
    })
    const full = {
      name: 'db-1',
      image: 'sha256:' + 'ab'.repeat(32),
      cpus: 2,
      memMiB: 2048,
      diskGiB: 40,
      arch: 'aarch64',
      nics: [{ net: 'lan', ip: '10.1.0.5' }, { net: 'v6', ip: 'fd00::5' }],
      labels: { tier: 'db', 'example.org/owner': 'ada' },
      pin: { host: PEER, labels: { rack: 'b' } },
      sshKeys: [SSH],
      restart: 'on-failure'
    }
    expect(validateBody('vm.create', full)).toEqual(full)
  })

  it.each<[string, unknown, RegExp]>([
    ['unknown field (raw XML)', { name: 'a', image: 'i', type: 'small', xml: '<domain/>' }, /body\.xml: unknown field/],
    ['QEMU args', { name: 'a', image: 'i', type: 'small', qemuArgs: ['-hda'] }, /body\.qemuArgs/],
    ['host path as image', { name: 'a', image: '/var/lib/x.img', type: 'small' }, /body\.image/],
    ['missing name', { image: 'i', type: 'small' }, /body\.name: required/],
    ['name not a DNS label', { name: 'Web_1', image: 'i', type: 'small' }, /body\.name/],
    ['no size', { name: 'a', image: 'i' }, /type.*cpus/],
    ['cpus without memory', { name: 'a', image: 'i', cpus: 2 }, /type.*cpus/],
    ['type and cpus', { name: 'a', image: 'i', type: 'small', cpus: 2 }, /not both/],
    ['zero cpus', { name: 'a', image: 'i', cpus: 0, memMiB: 512 }, /body\.cpus: 0 is out of range/],
    ['fractional memory', { name: 'a', image: 'i', cpus: 1, memMiB: 512.5 }, /body\.memMiB: expected an integer/],
    ['unknown arch', { name: 'a', image: 'i', type: 'small', arch: 'riscv64' }, /body\.arch/],
    ['bad nic net', { name: 'a', image: 'i', type: 'small', nics: [{ net: 'LAN' }] }, /body\.nics\[0\]\.net/],
    ['bad nic ip', { name: 'a', image: 'i', type: 'small', nics: [{ net: 'lan', ip: '10.1.0.256' }] }, /body\.nics\[0\]\.ip/],
    ['nic field not allowed', { name: 'a', image: 'i', type: 'small', nics: [{ net: 'lan', bridge: 'br0' }] }, /body\.nics\[0\]\.bridge/],
    ['same net twice', { name: 'a', image: 'i', type: 'small', nics: [{ net: 'lan' }, { net: 'lan' }] }, /body\.nics\[1\]\.net: network "lan" is attached twice/],
    ['label with control char', { name: 'a', image: 'i', type: 'small', labels: { k: 'a\nb' } }, /body\.labels\.k/],
    ['label key', { name: 'a', image: 'i', type: 'small', labels: { 'Bad Key': 'v' } }, /body\.labels key/],
    ['empty pin', { name: 'a', image: 'i', type: 'small', pin: {} }, /body\.pin/],
    ['bad pin host', { name: 'a', image: 'i', type: 'small', pin: { host: 'hostname' } }, /body\.pin\.host/],
    ['bad ssh key', { name: 'a', image: 'i', type: 'small', sshKeys: ['not a key'] }, /body\.sshKeys\[0\]/],
    ['bad restart', { name: 'a', image: 'i', type: 'small', restart: 'sometimes' }, /body\.restart/],
    ['array body', [], /body: expected an object/]
  ])('rejects %s', (_n, body, field) => rejects('vm.create', body, field))

  it('refuses a __proto__ label key without touching prototypes', () => {
    const body = JSON.parse('{"name":"a","image":"i","type":"small","labels":{"__proto__":"x"}}') as unknown
    rejects('vm.create', body, /body\.labels key "__proto__"/)
    expect(({} as Record<string, unknown>).x).toBeUndefined()
  })

  it('sizes a VM from its type or its explicit resources', () => {
    expect(vmResources({ type: 'medium', diskGiB: 20 })).toEqual({ vcpus: 2, memMiB: 4096, diskGiB: 20 })
    expect(vmResources({ cpus: 3, memMiB: 3000, diskGiB: 5 })).toEqual({ vcpus: 3, memMiB: 3000, diskGiB: 5 })
    expect(vmResources({ type: 'gpu', diskGiB: 5 })).toBeUndefined()
    expect(vmResources({ type: 'gpu', diskGiB: 5 }, { gpu: { cpus: 8, memMiB: 16384 } })).toEqual({ vcpus: 8, memMiB: 16384, diskGiB: 5 })
    expect(vmResources({ type: 'toString', diskGiB: 5 })).toBeUndefined()
  })
})

describe('other kinds', () => {
  it('accept their bodies', () => {
    expect(validateBody('vm.stop', { vm: 'web' })).toEqual({ vm: 'web', force: false })
    expect(validateBody('vm.destroy', { vm: 'ab'.repeat(32) })).toEqual({ vm: 'ab'.repeat(32) })
    expect(validateBody('vm.nic.add', { vm: 'web', nic: { net: 'lan' } })).toEqual({ vm: 'web', nic: { net: 'lan' } })
    expect(validateBody('vm.nic.remove', { vm: 'web', net: 'lan' })).toEqual({ vm: 'web', net: 'lan' })
    expect(validateBody('vm.modify', { vm: 'web', memMiB: 2048 })).toEqual({ vm: 'web', memMiB: 2048 })
    expect(validateBody('vm.move', { vm: 'web', pin: { labels: { zone: 'b' } }, from: PEER })).toEqual({ vm: 'web', pin: { labels: { zone: 'b' } }, from: PEER })
    expect(validateBody('net.create', { name: 'lan', subnet: { ipv4: '10.1.0.0/24', ipv6: 'fd00:1::/64' }, mode: 'slaac', gateway: { vm: 'fw' } }))
      .toEqual({ name: 'lan', subnet: { ipv4: '10.1.0.0/24', ipv6: 'fd00:1::/64' }, mode: 'slaac', gateway: { vm: 'fw' }, labels: {} })
    expect(validateBody('net.create', { name: 'lan', subnet: { ipv4: '10.1.0.0/24' } }))
      .toMatchObject({ mode: 'static', gateway: 'host-nat' })
    // host-nat is IPv4 NAT: an IPv6-only network defaults to no gateway.
    expect(validateBody('net.create', { name: 'v6', subnet: { ipv6: 'fd00:1::/64' }, mode: 'slaac' }))
      .toMatchObject({ mode: 'slaac', gateway: 'none' })
    expect(validateBody('net.delete', { net: 'lan' })).toEqual({ net: 'lan' })
    expect(validateBody('image.add', { name: 'debian-12', sha256: 'cd'.repeat(32), format: 'qcow2', sizeBytes: 1 << 30 }))
      .toEqual({ name: 'debian-12', sha256: 'cd'.repeat(32), format: 'qcow2', sizeBytes: 1 << 30, arch: 'x86_64', labels: {} })
    expect(validateBody('image.delete', { image: 'debian-12' })).toEqual({ image: 'debian-12' })
    expect(validateBody('key.revoke', { fingerprint: 'C'.repeat(40), reason: 'laptop stolen' }))
      .toEqual({ fingerprint: 'C'.repeat(40), reason: 'laptop stolen' })
  })

  it.each<[RequestKind, unknown, RegExp]>([
    ['vm.start', {}, /body\.vm: required/],
    ['vm.start', { vm: 'web', host: PEER }, /body\.host: unknown field/],
    ['vm.stop', { vm: 'web', force: 'yes' }, /body\.force/],
    ['vm.modify', { vm: 'web' }, /nothing to modify/],
    ['vm.modify', { vm: 'web', type: 'large', memMiB: 1024 }, /not both/],
    ['vm.move', { vm: 'web', pin: { host: PEER } }, /body\.from: required/],
    ['vm.move', { vm: 'web', pin: { host: PEER }, from: PEER }, /body\.pin\.host: the VM would move to the host it leaves/],
    ['net.create', { name: 'lan', subnet: {} }, /body\.subnet/],
    ['net.create', { name: 'lan', subnet: { ipv4: '10.1.0.1/24' } }, /body\.subnet\.ipv4.*zero host bits/],
    ['net.create', { name: 'lan', subnet: { ipv4: '10.1.0.0/24' }, mode: 'slaac' }, /body\.mode: slaac needs/],
    ['net.create', { name: 'lan', subnet: { ipv6: 'fd00:1::/48' }, mode: 'slaac' }, /body\.mode/],
    ['net.create', { name: 'lan', subnet: { ipv4: '10.1.0.0/24' }, mode: 'dhcpv6' }, /body\.mode: dhcpv6 needs an IPv6 subnet of exactly \/64/],
    ['net.create', { name: 'lan', subnet: { ipv4: '10.1.0.0/24' }, gateway: 'router' }, /body\.gateway/],
    ['net.create', { name: 'v6', subnet: { ipv6: 'fd00:1::/64' }, mode: 'slaac', gateway: 'host-nat' }, /body\.gateway: host-nat .* needs an IPv4 subnet/],
    ['net.create', { name: 'lan', subnet: { ipv4: '10.1.0.0/24' }, bridge: 'br0' }, /body\.bridge/],
    ['image.add', { name: 'x', sha256: 'CD'.repeat(32), format: 'qcow2', sizeBytes: 1 }, /body\.sha256/],
    ['image.add', { name: 'x', sha256: 'cd'.repeat(32), format: 'vmdk', sizeBytes: 1 }, /body\.format/],
    ['image.add', { name: 'x', sha256: 'cd'.repeat(32), format: 'raw', sizeBytes: 1, url: 'http://x/' }, /body\.url: unknown field/],
    ['key.revoke', { fingerprint: 'c'.repeat(40) }, /body\.fingerprint/]
  ])('%s rejects %j', (kind, body, field) => rejects(kind, body, field))

  it('cover every kind', () => {
    expect(REQUEST_KINDS).toHaveLength(13)
  })
})

describe('address parsing', () => {
  it('parses IPv6 forms', () => {
    expect(parseIpv6('::')).toEqual([0, 0, 0, 0, 0, 0, 0, 0])
    expect(parseIpv6('fd00::1')).toEqual([0xfd00, 0, 0, 0, 0, 0, 0, 1])
    expect(parseIpv6('::ffff:10.0.0.1')).toEqual([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001])
    expect(parseIpv6('1:2:3:4:5:6:7:8')).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
    for (const bad of ['1::2::3', '1:2:3:4:5:6:7:8:9', '12345::', 'g::1', ':::', '1:2:3:4:5:6:7::8']) expect(parseIpv6(bad), bad).toBeUndefined()
  })
  it('checks host bits of networks', () => {
    expect(parseCidr('10.0.0.0/8', 4)).toBeDefined()
    expect(parseCidr('10.0.0.128/25', 4)).toBeDefined()
    expect(parseCidr('10.0.0.64/25', 4)).toBeUndefined()
    expect(parseCidr('010.0.0.0/8', 4)).toBeUndefined()
    expect(parseCidr('fd00:1:2::/48', 6)).toBeDefined()
    expect(parseCidr('fd00:1:2::1/48', 6)).toBeUndefined()
    expect(parseCidr('fd00::/129', 6)).toBeUndefined()
  })
})
