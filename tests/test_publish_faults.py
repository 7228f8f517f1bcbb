"""The publisher under the faults today's Zenodo shows: a crash mid-upload then --resume, 429
storms, 500/504 that still took effect, corrupted and dropped uploads, and errors that must not
be retried. The emulator injects them over real HTTP on 127.0.0.1."""

from __future__ import annotations

import email.utils
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pystac
import pytest

import publish.release as release_module
from catalog.build import catalog_release
from catalog.uncertainty import PAPER_FACTORS
from producer.spec import RELEASE_NOTES
from publish.state import load_state, packages_dir, save_state
from publish.zenodo import RateLimiter, RetryPolicy, ZenodoClient, ZenodoError
from tests.publish_support import (
    TOKEN,
    api_publish,
    manifest_files,
    publish_args,
    put_keys,
    run_cli,
    server_files,
    withdraw_shelf,
)
from tests.zenodo_emulator import FULL_SCOPES, ZenodoEmulator

pytest_plugins = ("tests.publish_fixtures",)
ROOT = Path(__file__).resolve().parents[1]
CLI = ("from producer.cli import build_app\n"
       "app = build_app()\n"
       "if len(app.registered_commands) == 1:\n"
       "    app.callback()(lambda: None)\n"
       "app()\n")


def statuses(emu: ZenodoEmulator, method: str, pattern: str) -> list[int]:
    """Statuses of the logged requests with this method whose path contains ``pattern``."""
    return [r.status for r in emu.requests if r.method == method and pattern in r.path]


def test_crash_after_uploads_then_resume_resends_no_verified_bytes(
        pub_release: Path, emulator: ZenodoEmulator) -> None:
    # The third upload hangs half-way; the publishing process is then killed (a crash).
    fault = emulator.add_fault("hang", "PUT", r"^/api/files/", skip=2)
    env = {**os.environ, "ZENODO_TOKEN": TOKEN, "PYTHONPATH": str(ROOT),
           "ICEDAMAGE_ZENODO_TIME_SCALE": "0.0005"}
    proc = subprocess.Popen([sys.executable, "-c", CLI,
                             *publish_args(pub_release, emulator, "1.0", "--new")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while fault.fired == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    emulator.release_hangs()
    assert fault.fired == 1, "the upload never started"
    state = load_state(pub_release)
    assert state is not None and state.stage == "draft"
    verified = sorted(k for k, f in state.files.items() if f.verified)
    assert len(verified) == 2
    # Without --resume the unfinished run is not silently restarted.
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 2 and "--resume" in out
    since = len(emulator.requests)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--resume"))
    assert code == 0, out
    resent = [r for r in emulator.requests[since:] if r.method == "PUT"
              and r.path.rsplit("/", 1)[-1] in verified]
    assert resent == []
    [record] = emulator.published()
    assert record.id == state.deposition_id and not emulator.drafts()
    assert server_files(emulator, record.id) == manifest_files(pub_release)


def test_429_storm_is_waited_out(pub_release: Path, emulator: ZenodoEmulator) -> None:
    emulator.add_fault("status", None, "", status=429, times=6, retry_after=7)
    result, out, policy = api_publish(pub_release, emulator, "1.0", new=True)
    assert result.stage == "published"
    assert [r.status for r in emulator.requests[:6]] == [429] * 6
    assert out.count("HTTP 429; retrying in") == 6
    # Every 429 was followed by a wait of at least its Retry-After.
    assert sum(wait >= 7 for wait in policy.waits) >= 6
    [record] = emulator.published()
    assert server_files(emulator, record.id) == manifest_files(pub_release)


def test_delete_answering_500_but_deleting_and_lost_newversion(
        pub_release: Path, emulator: ZenodoEmulator) -> None:
    api_publish(pub_release, emulator, "1.0", new=True)
    [v1] = emulator.published()
    withdraw_shelf(pub_release, "Amery_front")
    emulator.add_fault("delete_500", "DELETE", r"^/api/files/")
    # and the answer to newversion is lost too: the draft it made is found, not made twice
    emulator.add_fault("after", "POST", r"/actions/newversion$", status=500)
    result, out, _ = api_publish(pub_release, emulator, "1.1",
                                 concept_id=str(v1.conceptrecid))
    assert result.stage == "published"
    assert statuses(emulator, "POST", "/actions/newversion") == [500]
    assert len(emulator.published(v1.conceptrecid)) == 2 and not emulator.drafts()
    assert result.deleted == ["Amery_front.zip"]  # its ROI GeoPackage went with it
    assert statuses(emulator, "DELETE", "Amery_front.zip") == [500, 404]  # done, then gone
    v2 = emulator.published()[-1]
    assert "Amery_front.zip" not in server_files(emulator, v2.id)
    assert server_files(emulator, v2.id) == manifest_files(pub_release)


def test_corrupted_upload_is_detected_and_repaired(pub_release: Path,
                                                   emulator: ZenodoEmulator) -> None:
    emulator.add_fault("corrupt", "PUT", r"/Totten\.zip$")
    result, out, _ = api_publish(pub_release, emulator, "1.0", new=True)
    assert result.stage == "published"
    assert "Totten.zip: the server stored size" in out and "uploading again" in out
    assert statuses(emulator, "PUT", "/Totten.zip") == [201, 201]
    [record] = emulator.published()
    assert server_files(emulator, record.id) == manifest_files(pub_release)


def test_dropped_upload_lost_answers_and_5xx(pub_release: Path,
                                             emulator: ZenodoEmulator) -> None:
    emulator.add_fault("drop", "PUT", r"/Larsen_B\.zip$")
    emulator.add_fault("status", "GET", r"/files$", status=500, times=2)
    emulator.add_fault("after", "POST", r"^/api/deposit/depositions$", status=504)
    emulator.add_fault("after", "POST", r"/actions/publish$", status=504)
    result, out, _ = api_publish(pub_release, emulator, "1.0", new=True)
    assert result.stage == "published"
    # The lost answers were checked, not blindly repeated: one record, one publish.
    assert len(statuses(emulator, "POST", "/api/deposit/depositions")) == 2  # create+publish
    assert statuses(emulator, "POST", "/actions/publish") == [504]
    assert len(emulator.depositions) == 1
    assert statuses(emulator, "PUT", "/Larsen_B.zip") == [0, 201]  # dropped, then sent again
    [record] = emulator.published()
    assert server_files(emulator, record.id) == manifest_files(pub_release)


def test_retry_after_as_an_http_date_is_waited_out(emulator: ZenodoEmulator) -> None:
    """A 429 whose Retry-After is an HTTP-date five minutes ahead: the client waits until
    then (not only until the emulator's X-RateLimit-Reset, about a minute ahead), then goes
    on."""
    when = email.utils.formatdate(time.time() + 300, usegmt=True)
    emulator.add_fault("status", "POST", r"^/api/deposit/depositions$", status=429,
                       retry_after=when)
    policy = RetryPolicy(time_scale=0.0005)
    client = ZenodoClient(emulator.base_url, TOKEN, retry=policy, limiter=RateLimiter(policy))
    draft = client.create()
    assert statuses(emulator, "POST", "/depositions") == [429, 201] and draft["id"]
    assert 250 <= max(policy.waits) <= 300, policy.waits


def test_client_errors_are_not_retried(emulator: ZenodoEmulator) -> None:
    policy = RetryPolicy(time_scale=0.0005)
    client = ZenodoClient(emulator.base_url, TOKEN, retry=policy, limiter=RateLimiter(policy))
    draft = client.create()
    before = len(emulator.requests)
    with pytest.raises(ZenodoError) as info:
        client.put_metadata(draft["id"], {"title": "x", "upload_type": "dataset",
                                          "shelf_names": ["Totten"]})
    assert info.value.status == 400 and "metadata.shelf_names: Unknown field." in str(info.value)
    bad = ZenodoClient(emulator.base_url, "not-a-token", retry=policy)
    with pytest.raises(ZenodoError) as info:
        bad.check_token()
    assert info.value.status == 401 and "not-a-token" not in str(info.value)
    assert len(emulator.requests) - before == 2  # one try each
    assert policy.waits == []


def test_crash_between_publish_and_write_back(pub_release: Path,
                                              emulator: ZenodoEmulator) -> None:
    api_publish(pub_release, emulator, "1.0", new=True)
    [v1] = emulator.published()
    withdraw_shelf(pub_release, "Amery_front")
    api_publish(pub_release, emulator, "1.1", concept_id=str(v1.conceptrecid))
    v2 = emulator.published()[-1]
    state = load_state(pub_release)
    assert state is not None
    state.stage = "verified"  # as if the process died right after Zenodo published
    save_state(pub_release, state)
    (pub_release / RELEASE_NOTES).unlink()
    since = len(emulator.requests)
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--concept-id",
                                     str(v1.conceptrecid), "--resume"))
    assert code == 0, out
    assert not [r for r in emulator.requests[since:] if r.mutating]
    notes = (pub_release / RELEASE_NOTES).read_text()
    assert f"zenodo.{v2.id}" in notes and "removed Amery_front.zip" in notes  # vs v1, not v2
    assert load_state(pub_release).stage == "published"  # type: ignore[union-attr]


def test_server_limits_are_reported_not_retried(pub_release: Path) -> None:
    small = ZenodoEmulator({TOKEN: FULL_SCOPES}, max_files=3).start()
    try:
        code, out = run_cli(publish_args(pub_release, small, "1.0", "--new"))
    finally:
        small.stop()
    assert code == 1 and "Too many files: a record holds at most 3" in " ".join(out.split())
    assert [r.status for r in small.requests if r.method == "PUT"] == [201, 201, 201, 400]
    assert not small.published()


def test_write_back_failure_leaves_no_working_folder_and_resume_finishes(
        pub_release: Path, emulator: ZenodoEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saving the catalog copy fails (a full disk): the run stops with a message, the old
    catalog is intact and nothing of ours is left at the root, so --resume (which validates
    the release again) finishes the write-back."""
    save = pystac.Catalog.save

    def full_disk(self: pystac.Catalog, *args: object, **kwargs: object) -> None:
        if "_stac_publish_tmp" in (self.get_self_href() or ""):
            raise OSError(28, "No space left on device")
        save(self, *args, **kwargs)

    before = (pub_release / "stac/catalog.json").read_bytes()
    monkeypatch.setattr(pystac.Catalog, "save", full_disk)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 1 and "No space left on device" in out and "--resume" in out, out
    [record] = emulator.published()
    assert sorted(p.name for p in pub_release.iterdir() if p.name.startswith("_")) == []
    assert (pub_release / "stac/catalog.json").read_bytes() == before
    monkeypatch.setattr(pystac.Catalog, "save", save)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--resume"))
    assert code == 0, out
    assert load_state(pub_release).stage == "published"  # type: ignore[union-attr]
    assert [d.id for d in emulator.published()] == [record.id]


def test_resume_tidies_the_working_folders_of_a_killed_write_back(
        pub_release: Path, emulator: ZenodoEmulator) -> None:
    """A process killed mid-swap leaves ``_stac_publish_old`` (the catalog) and
    ``_stac_publish_tmp``: --resume puts the catalog back and removes the copy."""
    api_publish(pub_release, emulator, "1.0", new=True)
    state = load_state(pub_release)
    assert state is not None
    state.stage = "verified"
    save_state(pub_release, state)
    shutil.copytree(pub_release / "stac", pub_release / "_stac_publish_tmp")
    (pub_release / "stac").rename(pub_release / "_stac_publish_old")
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--dry-run"))
    assert code == 0 and "would tidy _stac_publish_tmp/" in out, out  # ... and changes nothing
    assert (pub_release / "_stac_publish_old").is_dir() and not (pub_release / "stac").exists()
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--resume"))
    assert code == 0, out
    assert "tidied _stac_publish_old/" in out and "tidied _stac_publish_tmp/" in out
    assert not [p for p in pub_release.iterdir() if p.name.startswith("_")]
    assert (pub_release / "stac/catalog.json").is_file()
    assert len(emulator.published()) == 1


def test_a_package_damaged_on_disk_is_rebuilt_not_sent(pub_release: Path,
                                                       emulator: ZenodoEmulator) -> None:
    """A built package changed later with the same size and mtime (bit rot, a stray write):
    --resume rebuilds it instead of uploading it (the server's checksum could never match)."""
    api_publish(pub_release, emulator, "1.0", new=True, no_publish=True)
    [draft] = emulator.drafts()
    package = packages_dir(pub_release) / "Totten.zip"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = package.stat()
    package.write_bytes(bytes(data))
    os.utime(package, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    del emulator.depositions[draft.id].files["Totten.zip"]  # the server lacks it: to upload
    since = len(emulator.requests)
    result, out, _ = api_publish(pub_release, emulator, "1.0", new=True, resume=True)
    assert result.stage == "published", out
    assert "Totten.zip: changed on disk since it was built; rebuilding" in out
    assert put_keys(emulator, since) == ["Totten.zip"]  # stac.zip is rebuilt byte-identical
    [record] = emulator.published()
    assert server_files(emulator, record.id) == manifest_files(pub_release)


def test_a_release_changed_after_validation_is_not_published(
        pub_release: Path, emulator: ZenodoEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes packaged are the bytes validated. Files changed, added or removed after the
    validator passed the release (a producer run still writing into it, an rsync finishing)
    stop the run before anything is sent, each file named, with the advice to validate again.
    The change is made right after the real validator returns, to be deterministic."""
    year = pub_release / "Totten/2021"
    product = next(year.glob("*_damage.tif"))
    gone = next(year.glob("*_provenance.json"))
    collection = next((pub_release / "stac").rglob("collection.json"))
    validate = release_module.validation_problems

    def validated_then_changed(release: Path, allow: tuple[str, ...] = ()) -> list[str]:
        problems = validate(release, allow)
        (year / "scratch_notes.txt").write_text("not part of the dataset\n")
        shutil.copyfile(next(year.glob("*_damage_map.tif")), product)
        gone.unlink()
        collection.write_text(collection.read_text() + "\n")
        return problems

    monkeypatch.setattr(release_module, "validation_problems", validated_then_changed)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    flat = " ".join(out.split())
    assert code == 2 and "changed after the validator checked it" in flat, out
    rel = lambda path: path.relative_to(pub_release).as_posix()  # noqa: E731
    assert f"changed since validated: {rel(product)}, {rel(collection)};" in flat
    assert f"new (not validated): {rel(year / 'scratch_notes.txt')}" in flat
    assert f"gone (validated, not packaged): {rel(gone)}" in flat
    assert f"icedamage validate {pub_release}" in flat and "Nothing was uploaded" in flat
    assert emulator.mutating_requests() == [] and not emulator.depositions


def test_a_package_the_build_cache_trusts_wrongly_is_rebuilt(
        pub_release: Path, emulator: ZenodoEmulator) -> None:
    """A file of the release rewritten with the same size and modification time (and the
    release re-cataloged and valid): the build cache would reuse the old shelf ZIP, but its
    members' sha256 differ from the validated files, so the ZIP is rebuilt and sent again."""
    api_publish(pub_release, emulator, "1.0", new=True, no_publish=True)
    record = next(pub_release.glob("Totten/2021/*_provenance.json"))
    stat = record.stat()
    text = record.read_text()
    record.write_text(text.replace('"icedamage": "test"', '"icedamage": "tost"'))
    assert record.stat().st_size == stat.st_size and record.read_text() != text
    os.utime(record, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    catalog_release(pub_release, PAPER_FACTORS, force=True)  # its checksum, read anew
    since = len(emulator.requests)
    result, out, _ = api_publish(pub_release, emulator, "1.0", new=True, resume=True)
    assert result.stage == "published", out
    assert "Totten.zip" in put_keys(emulator, since)
    [published] = emulator.published()
    with zipfile.ZipFile(io.BytesIO(published.files["Totten.zip"].data)) as zf:
        assert zf.read(record.relative_to(pub_release).as_posix()) == record.read_bytes()


def test_an_interrupted_first_release_goes_on_without_new(pub_release: Path,
                                                          emulator: ZenodoEmulator) -> None:
    """An upload that fails every try names the request and the draft kept, and says to run
    again with --resume; --resume without --new then continues the draft as the first version
    (its concept has no published version yet)."""
    emulator.add_fault("status", "PUT", r"/metadata\.ods$", status=503, times=100)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"),
                        env={"ICEDAMAGE_ZENODO_ATTEMPTS": "2"})
    flat = " ".join(out.split())
    [draft] = emulator.drafts()
    assert code == 1 and "metadata.ods: gave up after 2 attempts (last: HTTP 503)" in flat
    assert "-> None" not in flat, out
    assert f"deposition {draft.id}" in flat and "run again with --resume" in flat
    emulator.clear_faults()
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--resume"))
    assert code == 0, out
    assert "goes on as its first version" in out
    assert [d.id for d in emulator.published()] == [draft.id] and not emulator.drafts()
    assert server_files(emulator, draft.id) == manifest_files(pub_release)


def test_a_resumed_write_back_lists_the_version_once(pub_release: Path,
                                                     emulator: ZenodoEmulator) -> None:
    """Killed after RELEASE_NOTES.md was written but before the state said "published": the
    resumed write-back replaces the version's section instead of adding a second one."""
    api_publish(pub_release, emulator, "1.0", new=True)
    [v1] = emulator.published()
    withdraw_shelf(pub_release, "Amery_front")
    api_publish(pub_release, emulator, "1.1", concept_id=str(v1.conceptrecid))
    state = load_state(pub_release)
    assert state is not None
    state.stage = "verified"
    save_state(pub_release, state)
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--resume"))
    assert code == 0, out
    notes = (pub_release / RELEASE_NOTES).read_text()
    assert notes.count("## Version 1.1 ") == 1 and notes.count("## Version 1.0 ") == 1
    assert notes.index("## Version 1.1 ") < notes.index("## Version 1.0 ")
