"""The hang watchdog (heatbath.drivers.stall): a block with no CPU use is reported once on stderr,
a busy one is not, and the decision rule reads the CPU time against the wall time."""

import threading
import time

from heatbath.drivers import stall


def test_the_rule_needs_the_whole_window_and_almost_no_cpu():
    assert not stall.stalled([(0.0, 0.0)], 1.0)
    assert not stall.stalled([(0.0, 0.0), (0.5, 0.0)], 1.0)  # not a whole window yet
    assert stall.stalled([(0.0, 0.0), (1.0, 0.01)], 1.0)  # 1% of a core
    assert not stall.stalled([(0.0, 0.0), (1.0, 0.5)], 1.0)  # computing


def test_a_block_that_waits_with_no_cpu_is_reported_once(capfd):
    # Another call watched at the same time (an older one, in another thread, with a long window)
    # does not hide this one.
    release = threading.Event()
    started = threading.Event()

    def another():
        with stall.watch("another call", window=3600):
            started.set()
            release.wait()

    other = threading.Thread(target=another)
    other.start()
    started.wait()
    try:
        with stall.watch("a test block", window=0.4):
            time.sleep(2.5)
    finally:
        release.set()
        other.join()
    err = capfd.readouterr().err
    assert "another call" not in err
    assert err.count("heatbath: a test block: almost no CPU used") == 1
    assert "fresh Python process" in err


def test_a_busy_block_and_a_disabled_watch_say_nothing(capfd, monkeypatch):
    with stall.watch("a busy block", window=0.4):
        t = time.monotonic()
        while time.monotonic() - t < 1.2:
            sum(i * i for i in range(1000))
    with stall.watch("a disabled block", window=0.4, enabled=False):
        time.sleep(0.8)
    monkeypatch.setenv("HEATBATH_STALL_SECONDS", "0")
    with stall.watch("an env-disabled block"):
        time.sleep(0.8)
    assert "heatbath:" not in capfd.readouterr().err
