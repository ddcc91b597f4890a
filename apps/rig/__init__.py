"""The emulated Raspberry Pi / Jetson rig: real kernel limits (cgroups) on memory, storage reads and cores, with
measured usage, fallbacks where cgroups are unavailable, and an arm64 Debian root run under qemu-user.

Modules, in the order a run uses them: :mod:`.limits` (parse and resolve limits from a target profile),
:mod:`.blockdev` (which disk backs a path), :mod:`.pagecache` (mincore / fadvise), :mod:`.cgroups` (v1/v2 groups),
:mod:`.fallback` (affinity, RLIMIT_AS, EDGESPOOL_IO_BANDWIDTH), :mod:`.runner` (run + report), :mod:`.arm64`
(the qemu root), :mod:`.bench` (measure the rig itself). See docs/RIGS.md.
"""
