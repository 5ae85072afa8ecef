"""Forkserver preload, imported last (runtime/pool._mp_context): the forkserver starts with SIGINT blocked
(pool._start_forkserver), so a Ctrl-C while it imports the warm-up prints no traceback of its own. Done
importing, it ignores SIGINT, which drops one that came meanwhile, and unblocks it: what it forks starts with
SIGINT ignored, not blocked, as before the block, so a process that installs a handler of its own gets Ctrl-C
again (another user of the process-wide forkserver, or a program a worker starts). Imported nowhere else."""
import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
