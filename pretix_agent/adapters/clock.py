"""A wall-clock timer that also tells when the wall clock is set (timerfd, Linux).

Window boundaries are wall-clock instants. A monotonic sleep computed from them goes wrong when the
clock is stepped (NTP at boot, an operator's `date -s`): the daemon would wake late and skip the
edge. A CLOCK_REALTIME timerfd armed with TFD_TIMER_ABSTIME fires at the wall-clock instant itself,
and with TFD_TIMER_CANCEL_ON_SET its read fails with ECANCELED as soon as the clock is set, so
the loop re-evaluates at once. Python's os.timerfd_* arrived only in 3.13; this uses libc via ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time

CLOCK_REALTIME = 0
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1
TFD_TIMER_CANCEL_ON_SET = 2
_FAR_AWAY = 366 * 86400.0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class WallTimer:
    """fileno() becomes readable at the armed wall-clock instant or when the clock is set."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def arm(self, at: float | None) -> None:
        """Fire at the wall-clock time `at` (Unix seconds); None only watches for clock changes."""
        if at is None:
            at = time.time() + _FAR_AWAY
        spec = _Itimerspec()
        spec.it_value.tv_sec = int(at)
        spec.it_value.tv_nsec = int((at - int(at)) * 1e9)
        if spec.it_value.tv_sec <= 0 and spec.it_value.tv_nsec <= 0:
            spec.it_value.tv_nsec = 1  # zero would disarm the timer
        flags = TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET
        if self._libc.timerfd_settime(self.fd, flags, ctypes.byref(spec), None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def read(self) -> str:
        """Return "expired", "clock_set" (re-arm it) or "none" (nothing happened)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return "none"
        except OSError as error:
            if error.errno == errno.ECANCELED:
                return "clock_set"
            raise
        return "expired"

    def close(self) -> None:
        os.close(self.fd)
