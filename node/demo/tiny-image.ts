/**
 * A tiny bootable x86_64 guest built from Debian packages only, for the real hypervisor and network
 * tests: Debian's kernel (from `apt-get download linux-image-<ver>-amd64`, the dependency of
 * `linux-image-amd64`) and a busybox-static initramfs whose /init
 *   - mounts proc, sys, devtmpfs and loads virtio-pci, virtio_net, virtio_blk, button, evdev;
 *   - configures eth0 from `pc.ip=<addr/len>` (and `pc.gw=<addr>`) or `pc.ip=dhcp` (udhcpc);
 *   - prints `picocloud-guest booted` on the serial console (ttyS0), and `picocloud-disk: <label>`
 *     when /dev/vda starts with a label, and `picocloud-guest ip <addr>` once eth0 is up;
 *   - powers off on the ACPI power button (busybox acpid), so `system_powerdown` works;
 *   - stays up with a shell on the console; the kernel answers ping.
 * Plus a 16 MiB raw disk whose first bytes are `picocloud-disk: tiny`.
 *
 * Built once and cached under `$TMPDIR/picocloud-tiny-image-<kernel>-<busybox>-v<N>/`; concurrent
 * builders build in private directories and rename the result into place.
 *
 * Measured on the development VM (2 vCPUs, TCG, no KVM): the first build takes ~5 s (70 MB kernel
 * package download + extraction); the guest prints `picocloud-guest booted` about 2.5-4 s after
 * QEMU starts.
 */
import { mkdir, writeFile, readdir, rename, rm, access, chmod, copyFile, readFile, symlink } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { randomBytes } from 'node:crypto'
import { realExec, check, type Exec } from '../exec.ts'

export interface TinyImage {
  dir: string
  kernel: string
  initrd: string
  /** Raw disk image (16 MiB) whose first bytes are `picocloud-disk: tiny`. */
  disk: string
  /** Kernel command line for the serial console; add `pc.ip=…` for networking. */
  append: string
  kernelVersion: string
}

/** Bump when the contents below change, so that caches are rebuilt. */
const BUILD_VERSION = 7
const MODULES = ['virtio_ring', 'virtio', 'virtio_pci_legacy_dev', 'virtio_pci_modern_dev', 'virtio_pci', 'failover', 'net_failover', 'virtio_net', 'virtio_blk', 'button', 'evdev']
export const BOOT_LINE = 'picocloud-guest booted'
export const DISK_LABEL = 'picocloud-disk: tiny'
/** Printed at each boot with the number of boots its disk has seen (kept at 56 MiB into the disk). */
export const BOOTS_LINE = 'picocloud-guest boots'

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Two passes: a module whose dependency comes later in the list loads on the second.
for pass in 1 2; do for m in ${MODULES.join(' ')}; do insmod /lib/modules/$m.ko 2>/dev/null; done; done
hostname pc-guest
ip link set lo up
PCIP=; PCGW=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    pc.ip=*) PCIP="\${arg#pc.ip=}" ;;
    pc.gw=*) PCGW="\${arg#pc.gw=}" ;;
  esac
done
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\\necho picocloud-guest powering off\\nsync\\npoweroff -f\\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
mkdir -p /var/log
acpid -f -c /etc/acpi -l /tmp/acpid.log &
[ -b /dev/vda ] && echo "$(head -c 20 /dev/vda)" | grep -q '^picocloud-disk:' && head -c 20 /dev/vda && echo
echo "${BOOT_LINE}"
# A boot counter on the disk itself, past the boot files: what a moved or replicated disk keeps.
if [ -b /dev/vda ] && [ "$(cat /sys/block/vda/size)" -gt 131072 ]; then
  N=$(dd if=/dev/vda bs=1M skip=56 count=1 2>/dev/null | head -c 32 | sed -n 's/^pc-boots \\([0-9]*\\).*/\\1/p')
  N=$(( \${N:-0} + 1 ))
  printf 'pc-boots %s\\n' "$N" | dd of=/dev/vda bs=1M seek=56 conv=notrunc 2>/dev/null
  sync
  echo "${BOOTS_LINE} $N"
fi
if [ -n "$PCIP" ] && ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up
  if [ "$PCIP" = dhcp ]; then
    udhcpc -i eth0 -b -q -s /etc/udhcpc.sh >/dev/null 2>&1
  else
    ip addr add "$PCIP" dev eth0 && echo "picocloud-guest ip $PCIP"
    [ -n "$PCGW" ] && ip route add default via "$PCGW"
  fi
fi
while true; do setsid cttyhack sh; done
`

const UDHCPC = `#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "\${router%% *}"
    echo "picocloud-guest ip $ip/\${mask:-24}" > /dev/console ;;
esac
`

async function exists (p: string): Promise<boolean> {
  try { await access(p); return true } catch { return false }
}

async function kernelPackage (exec: Exec): Promise<string> {
  const out = await check(exec, 'apt-cache', ['depends', 'linux-image-amd64'])
  const m = /Depends:\s*(linux-image-[\w.+-]+)/.exec(out)
  if (m === null) throw new Error(`cannot find the kernel package linux-image-amd64 depends on (run apt-get update?): ${out}`)
  return m[1]
}

/** Builds (or finds in the cache) the tiny image. Needs apt-get (lists updated), dpkg-deb, cpio, gzip. */
export async function tinyImage (exec: Exec = realExec): Promise<TinyImage> {
  const pkg = await kernelPackage(exec)
  // busybox-static is downloaded, not installed: it conflicts with the dynamic `busybox` package.
  const bbInfo = await check(exec, 'apt-cache', ['show', '--no-all-versions', 'busybox-static'])
  const busyboxVersion = /^Version:\s*(\S+)/m.exec(bbInfo)?.[1] ?? 'unknown'
  const kernelVersion = pkg.replace(/^linux-image-/, '')
  const key = `${kernelVersion}-${busyboxVersion}-v${BUILD_VERSION}`.replace(/[^\w.-]/g, '_')
  const dir = join(tmpdir(), `picocloud-tiny-image-${key}`)
  const image: TinyImage = {
    dir,
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initrd.gz'),
    disk: join(dir, 'disk.raw'),
    append: 'console=ttyS0 panic=-1 loglevel=4',
    kernelVersion
  }
  if (await exists(join(dir, 'done'))) return image

  const work = `${dir}.build-${randomBytes(4).toString('hex')}`
  try {
    await mkdir(work, { recursive: true })
    const dl = join(work, 'dl')
    await mkdir(dl)
    // _apt cannot write into a 0700 temp dir; apt then downloads as root (a warning, not an error).
    await check(exec, 'sh', ['-c', 'cd "$1" && apt-get download -q "$2" busybox-static', 'sh', dl, pkg], { timeoutMs: 300_000 })
    const bbDeb = (await readdir(dl)).find(f => f.startsWith('busybox-static_'))
    if (bbDeb === undefined) throw new Error('apt-get download busybox-static produced no .deb')
    await check(exec, 'sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" ./bin/busybox', 'sh', join(dl, bbDeb), work])
    const deb = (await readdir(dl)).find(f => f.startsWith('linux-image-'))
    if (deb === undefined) throw new Error(`apt-get download ${pkg} produced no .deb`)
    const x = join(work, 'x')
    await mkdir(x)
    const wanted = [`./boot/vmlinuz-${kernelVersion}`]
    await check(exec, 'sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "$3" "./lib/modules/*.ko"',
      'sh', join(dl, deb), x, wanted[0]], { timeoutMs: 300_000 })
    await copyFile(join(x, 'boot', `vmlinuz-${kernelVersion}`), join(work, 'vmlinuz'))

    const root = join(work, 'root')
    for (const d of ['bin', 'lib/modules', 'etc', 'proc', 'sys', 'dev', 'tmp']) await mkdir(join(root, d), { recursive: true })
    await copyFile(join(work, 'bin', 'busybox'), join(root, 'bin', 'busybox'))
    await chmod(join(root, 'bin', 'busybox'), 0o755)
    await symlink('busybox', join(root, 'bin', 'sh'))
    const found = await check(exec, 'find', [join(x, 'lib', 'modules'), '-name', '*.ko'])
    for (const m of MODULES) {
      const path = found.split('\n').find(l => l.endsWith(`/${m}.ko`))
      if (path === undefined) throw new Error(`module ${m}.ko not found in ${deb}`)
      await copyFile(path, join(root, 'lib', 'modules', `${m}.ko`))
    }
    await writeFile(join(root, 'init'), INIT, { mode: 0o755 })
    await writeFile(join(root, 'etc', 'udhcpc.sh'), UDHCPC, { mode: 0o755 })
    await check(exec, 'sh', ['-c', 'cd "$1" && find . | cpio -o -H newc --quiet -R 0:0 | gzip -1 > "$2"', 'sh', root, join(work, 'initrd.gz')])

    const disk = Buffer.alloc(16 * 1024 * 1024)
    disk.write(DISK_LABEL + '\n')
    await writeFile(join(work, 'disk.raw'), disk)
    await rm(dl, { recursive: true, force: true })
    await rm(x, { recursive: true, force: true })
    await rm(root, { recursive: true, force: true })
    await writeFile(join(work, 'done'), `${pkg} busybox-static ${busyboxVersion}\n`)
    try {
      await rename(work, dir)
    } catch (err) {
      // Another builder won the race: use its result.
      if (!(await exists(join(dir, 'done')))) throw err
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
  return image
}

/** The serial log's text, '' if it does not exist yet. */
export async function readLog (path: string): Promise<string> {
  try { return await readFile(path, 'utf8') } catch { return '' }
}
