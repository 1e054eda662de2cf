"""Checkpoint safety (issue 17, classes 1, 4 and 6).

1. Files stay inside the checkpoint directory: only the plain names heatbath writes are
   accepted from meta.json (no absolute path, '..', subdirectory or symbolic link), every
   array's shape and dtype is checked from its .npy header before it is decompressed, a
   malformed or hand-edited meta.json is a ValueError naming the field.
4. One command line can be re-run after any kill: resume="auto", no silent overwrite of a
   committed checkpoint, a lock against two runs writing one directory, temporary files of a
   killed write removed on the next open.
6. A read-only, full or deleted directory: a clear error before anything is compiled, and a
   commit that fails mid-run raises with the draws made so far attached.
"""

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.drivers import checkpoint as ck
from heatbath.drivers import checkpoint_io as cio
from heatbath.drivers import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One target and one sampler for the whole module, so that the compiled chunks are reused.
GAUSS_SRC = ("hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b), "
             "jnp.zeros((4,)), params=jnp.zeros(2))")
TARGET = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b),
                                   jnp.zeros((4,)), params=jnp.zeros(2))  # the same as GAUSS_SRC (for a child)
SAMPLER = hb.samplers.sgld(0.1)
# Segments: one warmup chunk (segment 0), then 4 sampling chunks of 10 draws (segments 1-4).
KW = dict(num_samples=40, num_warmup=10, chunk_size=10, num_chains=2, progress_bar=False, seed=5)


def sample(**kw):
    return hb.sample(TARGET, SAMPLER, **{**KW, **kw})


@pytest.fixture(scope="module")
def straight():
    return sample()


@contextlib.contextmanager
def crash_after(commits: int, exc=KeyboardInterrupt):
    """Raise ``exc`` right after the ``commits``-th commit (a run killed just then)."""
    real = ck.Checkpoint.commit
    count = [0]

    def commit(self, *args, **kwargs):
        meta = real(self, *args, **kwargs)
        count[0] += 1
        if count[0] == commits:
            raise exc("simulated crash")
        return meta

    ck.Checkpoint.commit = commit
    try:
        yield
    finally:
        ck.Checkpoint.commit = real


def interrupted(path, commits=3):
    """A checkpoint at ``path`` with ``commits`` segments done (warmup + commits - 1 sampling chunks)."""
    with crash_after(commits), pytest.raises(KeyboardInterrupt):
        sample(checkpoint=path)
    assert ck.Checkpoint.read_meta(path)["segments_done"] == commits
    return path


def edit_meta(path, fn):
    meta_path = os.path.join(path, "meta.json")
    meta = json.load(open(meta_path))
    out = fn(meta)
    with open(meta_path, "w") as f:
        json.dump(meta if out is None else out, f)


def sha256(path):
    return cio.sha256(path)


def temporaries(path):
    return sorted(n for n in os.listdir(path) if cio.TEMP.fullmatch(n))


# -- 1. files stay inside the directory ------------------------------------------------------
@pytest.mark.parametrize("how", ["absolute", "dotdot", "subdirectory", "symlink"])
def test_a_state_file_outside_the_directory_is_never_read_nor_deleted(tmp_path, how):
    path = interrupted(str(tmp_path / "c"))
    outside = tmp_path / "other_run"
    outside.mkdir()
    victim = outside / "state_000003.npz"
    shutil.move(os.path.join(path, "state_000003.npz"), victim)
    before = victim.read_bytes()
    if how == "absolute":
        edit_meta(path, lambda m: m["state"].update(file=str(victim)))
    elif how == "dotdot":
        edit_meta(path, lambda m: m["state"].update(file="../other_run/state_000003.npz"))
    elif how == "subdirectory":
        os.mkdir(os.path.join(path, "sub"))
        shutil.copy(victim, os.path.join(path, "sub", "state_000003.npz"))
        edit_meta(path, lambda m: m["state"].update(file="sub/state_000003.npz"))
    else:  # the right name, but a symbolic link to another run's file (with the right digest)
        os.symlink(victim, os.path.join(path, "state_000003.npz"))
    match = "symbolic link" if how == "symlink" else "'state.file'"
    with pytest.raises(ValueError, match=match):
        sample(resume=path)
    with pytest.raises(ValueError, match=match):
        sample(checkpoint=path, resume="auto")
    assert victim.read_bytes() == before


def test_a_draws_file_outside_the_directory_is_refused(tmp_path):
    path = interrupted(str(tmp_path / "c"))
    foreign = tmp_path / "draws_000001.npz"
    shutil.copy(os.path.join(path, "draws_000001.npz"), foreign)
    edit_meta(path, lambda m: m["draws"][0].update(file=str(foreign)))
    with pytest.raises(ValueError, match=r"'draws\[0\]\.file'"):
        sample(resume=path)
    assert foreign.exists()


def _rewrite_npz(path, members: dict):
    """Replace the npz at ``path`` by raw members (name -> .npy bytes), stored or compressed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, raw in members.items():
            z.writestr(name, raw)


def _npy(arr) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, np.asarray(arr))
    return b.getvalue()


def _members(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def test_shapes_and_dtypes_are_checked_before_anything_is_decompressed(tmp_path, monkeypatch):
    path = interrupted(str(tmp_path / "c"))
    draws_file = os.path.join(path, "draws_000001.npz")
    members = _members(draws_file)
    # 100 MB of zeros that compress to ~100 kB, where the run expects (10, 2, 2) float32.
    members["a0.npy"] = _npy(np.zeros((25_000, 1000), np.float32))
    _rewrite_npz(draws_file, members)
    edit_meta(path, lambda m: m["draws"][0].update(sha256=sha256(draws_file)))
    read = [0]
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        out = real_read(self, n)
        read[0] += len(out)
        return out

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    with pytest.raises(ValueError, match=r"shape \(25000, 1000\).*expects \(10, 2, 2\)"):
        sample(resume=path)
    assert read[0] < 1 << 20, f"{read[0]} bytes were decompressed before the shape was checked"


def test_a_member_whose_size_does_not_match_its_header_is_refused(tmp_path):
    path = interrupted(str(tmp_path / "c"))
    draws_file = os.path.join(path, "draws_000002.npz")
    members = _members(draws_file)
    members["a0.npy"] = members["a0.npy"] + b"\0" * 4096  # the right header, then more bytes than it says
    _rewrite_npz(draws_file, members)
    edit_meta(path, lambda m: m["draws"][1].update(sha256=sha256(draws_file)))
    with pytest.raises(ValueError, match="claims"):
        sample(resume=path)
    # A wrong dtype in the header is refused too (float64 where the run has float32).
    members = _members(draws_file)
    members["a0.npy"] = _npy(np.zeros((10, 2, 2), np.float64))
    _rewrite_npz(draws_file, members)
    edit_meta(path, lambda m: m["draws"][1].update(sha256=sha256(draws_file)))
    with pytest.raises(ValueError, match="float64 where this run expects"):
        sample(resume=path)


def _set(*keys, value):
    def fn(meta):
        obj = meta
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value

    return fn


def _delete(*keys):
    def fn(meta):
        obj = meta
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]

    return fn


MALFORMED = {
    "segments_done str": (_set("segments_done", value="3"), "'segments_done'"),
    "segments_done float": (_set("segments_done", value=3.0), "'segments_done'"),
    "segments_done bool": (_set("segments_done", value=True), "'segments_done'"),
    "segments_done null": (_set("segments_done", value=None), "'segments_done'"),
    "segments_done negative": (_set("segments_done", value=-1), "'segments_done'"),
    "segments_done huge": (_set("segments_done", value=10**40), "'state.file'"),
    "no draws": (_delete("draws"), "'draws'"),
    "draws object": (_set("draws", value={}), "'draws'"),
    "draws of ints": (_set("draws", value=[1]), r"'draws\[0\]'"),
    "draws segment missing": (_delete("draws", 0, "segment"), r"'draws\[0\]\.segment'"),
    "draws segment str": (_set("draws", 0, "segment", value="1"), r"'draws\[0\]\.segment'"),
    "draws file int": (_set("draws", 0, "file", value=3), r"'draws\[0\]\.file'"),
    "draws file missing": (_delete("draws", 1, "file"), r"'draws\[1\]' has no 'file'"),
    "state str": (_set("state", value="state_000003.npz"), "'state'"),
    "state empty": (_set("state", value={}), "'state' has no 'file'"),
    "state file list": (_set("state", "file", value=["state_000003.npz"]), "'state.file'"),
    "state file other name": (_set("state", "file", value="meta.json"), "'state.file'"),
    "state sha int": (_set("state", "sha256", value=5), "'state.sha256'"),
    "state kinds str": (_set("state", "kinds", value="array"), "'state.kinds'"),
    "state kind short": (_set("state", "kinds", 0, value=["array"]), r"'state\.kinds\[0\]'"),
    "settings list": (_set("settings", value=[]), "'settings'"),
    "version bool": (_set("version", value=True), "version"),
    "no format": (_delete("format"), "not a heatbath checkpoint"),
    "extra outside": (_set("extra", value={"file": "../extra.npz", "sha256": "0" * 64, "kinds": []}),
                      "'extra.file'"),
    "top-level list": (lambda m: [m], "not a heatbath checkpoint"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_meta_fields_are_value_errors_naming_the_field(tmp_path, case):
    path = interrupted(str(tmp_path / "c"))
    edit, field = MALFORMED[case]
    edit_meta(path, edit)
    for kw in (dict(resume=path), dict(checkpoint=path, resume="auto"), dict(checkpoint=path, resume=True)):
        with pytest.raises(ValueError, match=field):  # not KeyError, TypeError, AttributeError, ...
            sample(**kw)


def test_deeply_nested_or_huge_meta_is_a_value_error(tmp_path):
    path = interrupted(str(tmp_path / "c"))
    meta_path = os.path.join(path, "meta.json")
    with open(meta_path, "w") as f:
        f.write('{"format": "heatbath-checkpoint", "version": 1, "settings": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ValueError, match="corrupted"):  # json's RecursionError, as a ValueError
        sample(resume=path)
    nested = []
    for _ in range(100):  # parses, but deeper than any meta.json heatbath writes
        nested = [nested]
    with open(meta_path, "w") as f:
        json.dump({"format": "heatbath-checkpoint", "version": 1, "settings": {"x": nested}, "segments_done": 3,
                   "state": {}, "draws": []}, f)
    with pytest.raises(ValueError, match="nested"):
        sample(resume=path)


def test_hand_edited_segments_or_draws_lists_are_refused(tmp_path):
    base = interrupted(str(tmp_path / "base"))  # segments_done 3: warmup, sampling chunks 1 and 2

    def fresh(name):
        p = str(tmp_path / name)
        shutil.copytree(base, p)
        return p

    # segments_done edited alone: the state file no longer matches it.
    p = fresh("a")
    edit_meta(p, _set("segments_done", value=2))
    with pytest.raises(ValueError, match="'state.file'.*state_000002.npz"):
        sample(resume=p)
    # segments_done and the state file edited together: the draws list lists a segment beyond it.
    p = fresh("b")
    os.rename(os.path.join(p, "state_000003.npz"), os.path.join(p, "state_000002.npz"))
    edit_meta(p, lambda m: m.update(segments_done=2) or m["state"].update(file="state_000002.npz"))
    with pytest.raises(ValueError, match="beyond segments_done"):
        sample(resume=p)
    # A duplicated draws entry.
    p = fresh("c")
    edit_meta(p, lambda m: m["draws"].append(dict(m["draws"][-1])))
    with pytest.raises(ValueError, match="repeats or is out of order"):
        sample(resume=p)
    # A dropped draws entry: the run would come back with a hole in its draws.
    p = fresh("d")
    edit_meta(p, _delete("draws", 0))
    with pytest.raises(ValueError, match="does not match segments_done"):
        sample(resume=p)
    # Draws listed for the warmup segment (it records none).
    p = fresh("e")
    shutil.copy(os.path.join(p, "draws_000001.npz"), os.path.join(p, "draws_000000.npz"))
    edit_meta(p, lambda m: m["draws"].insert(0, dict(m["draws"][0], file="draws_000000.npz", segment=0)))
    with pytest.raises(ValueError, match="does not match segments_done"):
        sample(resume=p)
    # Two draws entries swapped (names and digests consistent, segments out of order).
    p = fresh("f")
    edit_meta(p, lambda m: m.update(draws=m["draws"][::-1]))
    with pytest.raises(ValueError, match="repeats or is out of order"):
        sample(resume=p)


# -- 4. one command line that can be re-run -------------------------------------------------
def test_resume_auto_starts_fresh_then_resumes(tmp_path, straight):
    path = str(tmp_path / "auto")
    with crash_after(3), pytest.raises(KeyboardInterrupt):
        sample(checkpoint=path, resume="auto")  # nothing there: starts fresh
    assert ck.Checkpoint.read_meta(path)["segments_done"] == 3
    again = sample(checkpoint=path, resume="auto")  # the same command line: resumes
    np.testing.assert_array_equal(again.samples["theta"], straight.samples["theta"])
    np.testing.assert_array_equal(again.stats["lp"], straight.stats["lp"])
    assert ck.Checkpoint.read_meta(path)["segments_done"] == 5
    done = sample(checkpoint=path, resume="auto")  # once more: the finished run, as it was
    np.testing.assert_array_equal(done.samples["theta"], straight.samples["theta"])
    # An empty existing directory is a fresh start too.
    os.mkdir(tmp_path / "empty")
    sample(checkpoint=str(tmp_path / "empty"), resume="auto")
    assert ck.Checkpoint.read_meta(str(tmp_path / "empty"))["segments_done"] == 5


def test_a_committed_checkpoint_is_never_silently_overwritten(tmp_path):
    path = interrupted(str(tmp_path / "c"))
    before = open(os.path.join(path, "meta.json"), "rb").read()
    with pytest.raises(ValueError, match=r"already holds a committed checkpoint.*resume='auto'.*resume=True"):
        sample(checkpoint=path)
    assert open(os.path.join(path, "meta.json"), "rb").read() == before
    # A run with other settings is refused under "auto" too (it is not this run's checkpoint).
    with pytest.raises(ValueError, match="different run"):
        sample(checkpoint=path, resume="auto", num_samples=50)
    assert open(os.path.join(path, "meta.json"), "rb").read() == before


def test_resume_argument_errors(tmp_path):
    empty = str(tmp_path / "empty")
    os.mkdir(empty)
    with pytest.raises(ValueError, match="no checkpoint"):
        sample(checkpoint=empty, resume=True)  # resume=True still means: there must be one
    with pytest.raises(ValueError, match="no checkpoint"):
        sample(resume=str(tmp_path / "missing"))
    assert not os.path.exists(tmp_path / "missing")
    with pytest.raises(ValueError, match="resume='auto' needs checkpoint=path"):
        sample(resume="auto")
    with pytest.raises(ValueError, match="resume=True needs checkpoint=path"):
        sample(resume=True)
    with pytest.raises(ValueError, match="resume must be"):
        sample(checkpoint=empty, resume=3)
    with pytest.raises(ValueError, match="checkpoint must be a directory path"):
        sample(checkpoint=3)
    with pytest.raises(ValueError, match="different paths"):
        sample(checkpoint=empty, resume=str(tmp_path / "other"))


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_a_second_process_is_refused_while_the_first_holds_the_lock_and_a_killed_one_does_not_block(tmp_path):
    path = str(tmp_path / "locked")
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from heatbath.drivers.checkpoint import Checkpoint
            held = Checkpoint({path!r}, {{}}).open()
            print("locked", flush=True)
            time.sleep(300)
        """)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(ck.CheckpointLockedError, match=rf"in use by another run \(process {child.pid}\)"):
            sample(checkpoint=path, resume="auto")
        with pytest.raises(ck.CheckpointLockedError):
            sample(checkpoint=path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    r = sample(checkpoint=path, resume="auto")  # the kernel released the killed process's lock
    assert r.samples["theta"].shape == (2, 40, 2)


def test_a_second_run_in_the_same_process_is_refused_and_the_lock_is_released_after(tmp_path, straight):
    path = str(tmp_path / "c")
    seen = []
    real = ck.Checkpoint.commit

    def commit(self, segments_done, *args, **kwargs):
        meta = real(self, segments_done, *args, **kwargs)
        if segments_done == 2:
            with pytest.raises(ck.CheckpointLockedError, match="another run in this process") as info:
                sample(checkpoint=path, resume="auto")
            seen.append(str(info.value))
        return meta

    ck.Checkpoint.commit = commit
    try:
        first = sample(checkpoint=path)
    finally:
        ck.Checkpoint.commit = real
    assert len(seen) == 1
    np.testing.assert_array_equal(first.samples["theta"], straight.samples["theta"])
    # Released at the end of the run, and after a run that failed.
    sample(checkpoint=path, resume="auto")
    with pytest.raises(ValueError, match="different run"):
        sample(checkpoint=path, resume="auto", seed=6)
    with ck.Checkpoint(path, {}):
        pass


def test_temporary_files_of_a_write_killed_midway_are_removed_on_the_next_open(tmp_path, straight):
    path = str(tmp_path / "killed")
    script = textwrap.dedent(f"""
        import os, signal
        import jax.numpy as jnp
        import heatbath as hb
        from heatbath.drivers import checkpoint_io as cio

        real = cio.atomic_write
        def atomic_write(p, write):
            if os.path.basename(p) == "state_000003.npz":  # SIGKILL halfway through writing it
                fd, tmp = cio.create_temp(os.path.dirname(p), os.path.basename(p))
                os.write(fd, b"PK\\x03\\x04 half a file")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(p, write)
        cio.atomic_write = atomic_write
        hb.sample({GAUSS_SRC}, hb.samplers.sgld(0.1), checkpoint={path!r}, resume="auto", **{KW!r})
    """)
    out = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert len(temporaries(path)) == 1 and temporaries(path)[0].endswith("state_000003.npz")
    assert ck.Checkpoint.read_meta(path)["segments_done"] == 2
    # Files that are not heatbath's temporaries are left alone.
    for name in ("notes.txt", ".tmp-mine.txt", ".tmp-abcdefghnotes.txt"):
        open(os.path.join(path, name), "w").write("mine")
    r = sample(checkpoint=path, resume="auto")  # the same command line
    assert temporaries(path) == []
    for name in ("notes.txt", ".tmp-mine.txt", ".tmp-abcdefghnotes.txt"):
        assert open(os.path.join(path, name)).read() == "mine"
    np.testing.assert_array_equal(r.samples["theta"], straight.samples["theta"])


# -- 6. read-only, full or deleted directories -----------------------------------------------
@pytest.fixture
def no_compilation(monkeypatch):
    """Fail the test if the run gets as far as the loop (where it compiles)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run started (and compiled) before the checkpoint directory was checked")

    monkeypatch.setattr(loop, "run", refuse)


def _refuse_writes(monkeypatch, code):
    def create_temp(directory, name):
        raise OSError(code, os.strerror(code), os.path.join(directory, name))

    monkeypatch.setattr(cio, "create_temp", create_temp)


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only"), (errno.EACCES, "not writable"),
                                          (errno.ENOSPC, "full")])
def test_an_unwritable_directory_fails_at_open_before_anything_compiles(tmp_path, monkeypatch, no_compilation,
                                                                      code, reason):
    # Simulated (a read-only mount, no permission, a full disk): the tests run as root, where
    # chmod does not stop writes; the real cases are in the two tests below where possible.
    path = str(tmp_path / "c")
    _refuse_writes(monkeypatch, code)
    with pytest.raises(ck.CheckpointWriteError, match=rf"cannot write to the checkpoint directory.*{reason}") as info:
        sample(checkpoint=path)
    assert info.value.errno == code and "Nothing was run" in str(info.value)
    with pytest.raises(ck.CheckpointWriteError, match=reason):
        hb.optimize(TARGET, num_steps=10, checkpoint=path)


@contextlib.contextmanager
def _mounted(args, where):
    """A mount (root only; skipped where the machine does not allow it), unmounted after."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount")
    os.makedirs(where, exist_ok=True)
    out = subprocess.run(["mount", *args, where], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount here: {out.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], capture_output=True)


def test_a_really_read_only_directory_fails_at_open(tmp_path, no_compilation):
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:  # chmod stops writes for a normal user
        os.chmod(path, 0o555)
        try:
            with pytest.raises(ck.CheckpointWriteError, match="read-only or not writable"):
                sample(checkpoint=str(path))
        finally:
            os.chmod(path, 0o755)
        return
    with _mounted(["--bind", "-o", "ro", str(path)], str(path)):  # root: a read-only bind mount
        with pytest.raises(ck.CheckpointWriteError, match="read-only or not writable"):
            sample(checkpoint=str(path))
        with pytest.raises(ck.CheckpointWriteError, match="read-only or not writable"):
            sample(checkpoint=str(path / "sub"))


def test_a_really_full_disk_fails_at_open_or_keeps_the_draws(tmp_path, straight):
    with _mounted(["-t", "tmpfs", "-o", "size=64k", "tmpfs"], str(tmp_path / "small")) as small:
        # Full at open: a filler takes all the space.
        filler = os.path.join(small, "filler")
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(ck.CheckpointWriteError, match="full"):
            sample(checkpoint=os.path.join(small, "c"))
        os.unlink(filler)
        # Full mid-run: every draws file takes a page; 200 chunks do not fit in 64 kB.
        path = os.path.join(small, "run")
        kw = dict(num_samples=200, chunk_size=1, num_chains=2, num_warmup=0)
        with pytest.raises(ck.CheckpointWriteError, match=r"full.*intact.*draws made so far are attached") as info:
            sample(checkpoint=path, **kw)
        full = sample(**kw)
        partial = info.value.partial
        n = partial["num_draws"]
        assert 0 < n < 200
        np.testing.assert_array_equal(partial["draws"]["theta"], full.samples["theta"].swapaxes(0, 1)[:n])
        np.testing.assert_array_equal(partial["stats"]["lp"], full.stats["lp"].swapaxes(0, 1)[:n])
        assert temporaries(path) == []
        # The committed checkpoint is intact: with room again, the same command finishes the run.
        moved = str(tmp_path / "moved")
        shutil.copytree(path, moved)
        assert ck.Checkpoint.read_meta(moved)["segments_done"] <= n
        r = sample(checkpoint=moved, resume="auto", **kw)
        np.testing.assert_array_equal(r.samples["theta"], full.samples["theta"])


def test_a_failed_commit_mid_run_raises_with_the_draws_made_so_far(tmp_path, monkeypatch, straight):
    path = str(tmp_path / "c")
    real = cio.atomic_write
    metas = [0]

    def atomic_write(p, write):  # the disk fills up while the 4th commit writes meta.json
        if os.path.basename(p) == "meta.json":
            metas[0] += 1
            if metas[0] == 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), p)
        return real(p, write)

    monkeypatch.setattr(cio, "atomic_write", atomic_write)
    with pytest.raises(ck.CheckpointWriteError, match=r"after 4 segments.*full.*3 segments done\) is intact"
                       r".*30 draws made so far are attached") as info:
        sample(checkpoint=path)
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    # Warmup + 3 sampling chunks ran: their 30 draws are attached, (draw, chain, ...).
    np.testing.assert_array_equal(err.partial["draws"]["theta"], straight.samples["theta"].swapaxes(0, 1)[:30])
    np.testing.assert_array_equal(err.partial["stats"]["lp"], straight.stats["lp"].swapaxes(0, 1)[:30])
    assert ck.Checkpoint.read_meta(path)["segments_done"] == 3
    assert temporaries(path) == []
    monkeypatch.setattr(cio, "atomic_write", real)
    r = sample(checkpoint=path, resume="auto")  # the lock was released; the same command finishes the run
    np.testing.assert_array_equal(r.samples["theta"], straight.samples["theta"])


def test_optimize_attaches_its_trace_when_a_commit_fails(tmp_path, monkeypatch):
    real = cio.atomic_write
    count = [0]

    def atomic_write(p, write):
        count[0] += 1
        if count[0] > 6:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), p)
        return real(p, write)

    monkeypatch.setattr(cio, "atomic_write", atomic_write)
    with pytest.raises(ck.CheckpointWriteError, match="quota") as info:
        hb.optimize(TARGET, num_steps=200, trace_every=10, checkpoint=str(tmp_path / "opt"))
    assert set(info.value.partial["stats"]) >= {"lp"} and info.value.partial["num_draws"] > 0


def test_a_directory_deleted_mid_run_is_an_error_with_the_draws_not_a_silent_new_checkpoint(tmp_path, straight):
    path = str(tmp_path / "c")
    real = ck.Checkpoint.commit

    def commit(self, segments_done, *args, **kwargs):
        meta = real(self, segments_done, *args, **kwargs)
        if segments_done == 2:
            shutil.rmtree(path)
        return meta

    ck.Checkpoint.commit = commit
    try:
        with pytest.raises(ck.CheckpointWriteError, match="deleted during the run.*20 draws made so far") as info:
            sample(checkpoint=path)
    finally:
        ck.Checkpoint.commit = real
    assert not os.path.exists(path)  # not recreated with draws files missing
    np.testing.assert_array_equal(info.value.partial["draws"]["theta"],
                                  straight.samples["theta"].swapaxes(0, 1)[:20])
    # Deleted before a resume: a clear error, nothing created.
    with pytest.raises(ValueError, match="no checkpoint"):
        sample(checkpoint=path, resume=True)
    assert not os.path.exists(path)
