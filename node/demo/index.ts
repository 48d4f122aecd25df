/**
 * The demo subsystem: `picocloud demo` (a mesh of three daemons on one machine), and the tiny
 * bootable guest it, the tests and the benchmarks start (a Debian kernel and busybox).
 */
export { runDemo } from './demo.ts'
export { bootDisk, hasBootDiskTools, type BootDisk } from './boot-disk.ts'
export { tinyImage, readLog, BOOT_LINE, DISK_LABEL, type TinyImage } from './tiny-image.ts'
