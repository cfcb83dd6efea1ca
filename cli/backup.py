"""``aml <memory_path> backup create|list|restore|verify|drill|rotate|auto``: the seeds' backup commands.

Plus ``backup init [--encrypt]`` and ``backup key add|list|remove`` (encrypted repositories, restic's key
slots). ``aml <memory_path> backup --password-file FILE COMMAND`` gives the password of an encrypted
repository to this process (inline runs; workers read their own ``AML_BACKUP_PASSWORD_FILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.common import (
    EnqueueOpt,
    JsonOpt,
    TimeoutOpt,
    WaitOpt,
    emit,
    exit_for_status,
    exit_if_skipped,
    run_task,
    store_of,
)
from cli.lazy import lazy_module
from cli.progressbar import progress_bar
from cli.render import console, err_console, new_table, print_json, styled

backup_tasks = lazy_module("tasks.backup")
drill_tasks = lazy_module("tasks.drill")
verify_tasks = lazy_module("tasks.verify")

backup_app = typer.Typer(help="Snapshots: create, list, restore (point in time), verify, drill, rotate.",
                         no_args_is_help=True)
key_app = typer.Typer(help="Key slots of an encrypted repository: add, list, remove.", no_args_is_help=True)
backup_app.add_typer(key_app, name="key")

PasswordFileOpt = Annotated[Path | None, typer.Option(
    "--password-file", help="File whose first line is the password of an encrypted repository "
    "(default: AML_BACKUP_PASSWORD_FILE). Used by this process only; workers read their own setting.")]


@backup_app.callback()
def _backup_callback(password_file: PasswordFileOpt = None) -> None:
    if password_file is None:
        return
    from workers.app import get_settings, use_settings

    # the inline task reads the password file from the settings, never from arguments
    use_settings(get_settings().replace(backup_password_file=str(password_file)))


def _repository(ctx: typer.Context) -> Any:
    """The store's repository, with the password of the settings (``--password-file``)."""
    from aml.gcpause import end_startup
    from tasks.snapshots import repository_of, store_id_of
    from workers.app import get_settings

    repository = repository_of(store_id_of(store_of(ctx)), get_settings())
    end_startup()  # what the command runs is imported (aml.gcpause)
    return repository


def _engine_call(fn: Any) -> Any:
    """Run an engine call; a :class:`BackupError` (wrong password...) is one line and exit code 2."""
    from aml.backup import BackupError

    try:
        return fn()
    except BackupError as exc:
        err_console.print(f"[red]error[/]: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def _read_password(path: Path, option: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint=option) from None
    password = raw.split(b"\n", 1)[0].rstrip(b"\r")
    if not password:
        raise typer.BadParameter(f"{path} is empty", param_hint=option)
    return password


@backup_app.command("init")
def init(ctx: typer.Context,
         encrypt: Annotated[bool, typer.Option("--encrypt", help="Create an encrypted repository (needs a "
                                               "password: --password-file or AML_BACKUP_PASSWORD_FILE).")] = False,
         as_json: JsonOpt = False) -> None:
    """Create the store's backup repository (a first backup creates a plain one implicitly)."""
    repo = _engine_call(lambda: _repository(ctx))
    _engine_call(lambda: repo.init(encrypt=encrypt))
    out = {"repository": repo.url, "encrypted": repo.encrypted, "id": repo.config.id}
    if as_json:
        print_json(out)
        return
    console.print(f"created {'[bold]encrypted[/] ' if encrypt else ''}repository {escape(out['repository'])}")
    if encrypt:
        console.print("keep the password safe: without it the backups cannot be read")


@key_app.command("list")
def key_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List key slots: id, created, host, user, KDF parameters (no secret)."""
    repo = _engine_call(lambda: _repository(ctx))
    keys = [k.to_dict() for k in _engine_call(repo.list_keys)]
    if as_json:
        print_json({"repository": repo.url, "keys": keys})
        return
    table = new_table(title=repo.url)
    for col in ("id", "created", "host", "user", "kdf"):
        table.add_column(col)
    for k in keys:
        kdf = k["kdf"]
        table.add_row(k["id"][:12], k["created"], k["hostname"], k["username"],
                      f"{kdf.get('name')} N={kdf.get('n')} r={kdf.get('r')} p={kdf.get('p')}")
    console.print(table)


@key_app.command("add")
def key_add(ctx: typer.Context,
            new_password_file: Annotated[Path, typer.Option("--new-password-file", help="File whose first line is "
                                                            "the new password.")],
            as_json: JsonOpt = False) -> None:
    """Add a key slot for another password (the current one, --password-file, must open the repository)."""
    repo = _engine_call(lambda: _repository(ctx))
    new = _read_password(new_password_file, "--new-password-file")
    key_id = _engine_call(lambda: repo.add_key(new))
    if as_json:
        print_json({"repository": repo.url, "added": key_id})
        return
    console.print(f"added key {key_id[:12]}")


@key_app.command("remove")
def key_remove(ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="Key id (or a unique prefix).")],
               as_json: JsonOpt = False) -> None:
    """Remove a key slot (never the last one)."""
    repo = _engine_call(lambda: _repository(ctx))
    _engine_call(lambda: repo.remove_key(key_id))
    if as_json:
        print_json({"repository": repo.url, "removed": key_id})
        return
    console.print(f"removed key {key_id}")


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


ExcludeOpt = Annotated[list[str] | None, typer.Option(
    "--exclude", metavar="PATTERN", help="Leave out paths matching PATTERN (restic's syntax, relative to the store: "
    "'*.tmp' at any depth, '/cache' at the root, 'a/**/b'; repeatable).")]
ExcludeFileOpt = Annotated[list[Path] | None, typer.Option(
    "--exclude-file", metavar="FILE", help="Read exclude patterns from FILE, one per line ('#' comments; "
    "repeatable).")]


def _excludes(patterns: list[str] | None, files: list[Path] | None) -> list[str]:
    """``--exclude`` patterns plus those read from the ``--exclude-file`` files (read here, so that an enqueued
    backup does not need the file on the worker)."""
    from aml.backup import read_exclude_file

    out = list(patterns or [])
    for f in files or []:
        try:
            out += read_exclude_file(f)
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {f}: {exc.strerror or exc}", param_hint="--exclude-file") from exc
    return out


def _run(task: Any, kwargs: dict[str, Any], as_json: bool, enqueue: bool, wait: bool,
         timeout: float) -> dict[str, Any] | None:
    with progress_bar(not as_json and not enqueue):
        return run_task(task, kwargs, enqueue=enqueue, wait=wait, timeout=timeout, as_json=as_json)



@backup_app.command("create")
def create(
    ctx: typer.Context,
    incremental: Annotated[bool, typer.Option("--incremental", help="Skip files unchanged since the last snapshot.")]
    = False,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Label (repeatable).")] = None,
    description: Annotated[str | None, typer.Option("--description", help="Free text.")] = None,
    exclude: ExcludeOpt = None, exclude_file: ExcludeFileOpt = None,
    as_json: JsonOpt = False, enqueue: EnqueueOpt = False, wait: WaitOpt = False, timeout: TimeoutOpt = 6 * 3600.0,
) -> None:
    """Take a snapshot (full, or incremental: only new contents are stored; every snapshot is complete).

    Symlinks are stored as links, names byte-exact; aml's own derived files (.aml/index.*) are excluded, and so
    are the paths matching --exclude / --exclude-file (restic's patterns, relative to the store).
    """
    result = _run(backup_tasks.create, {"store": store_of(ctx), "incremental": incremental, "tags": tag or [],
                                        "description": description,
                                        "excludes": _excludes(exclude, exclude_file) or None},
                  as_json, enqueue, wait, timeout)
    if result is None:
        return
    exit_if_skipped(result, "backup create", as_json)
    if as_json:
        print_json(result)
    elif "keys" in result:  # a Redis keyspace (aml.backup.keyspace)
        types = ", ".join(f"{k} {v:,}" for k, v in sorted(result["types"].items()))
        console.print(f"snapshot [bold]{result['backup_id']}[/] ({result['backup_type']}): {result['keys']:,} keys "
                      f"({types or 'none'}; {result['keys_with_expiry']:,} with expiry), "
                      f"{_human(result['total_size_bytes'])}; {result['files_unchanged']:,} unchanged; added "
                      f"{_human(result['stored_bytes'])} to {result['repository']} in "
                      f"{result['duration_seconds']:.2f} s", soft_wrap=True)
    else:
        console.print(f"snapshot [bold]{result['backup_id']}[/] ({result['backup_type']}): {result['file_count']} "
                      f"files, {_human(result['total_size_bytes'])}; read {result['files_read']} files, "
                      f"{result['files_unchanged']} unchanged; added {_human(result['stored_bytes'])} to "
                      f"{result['repository']} in {result['duration_seconds']:.2f} s")
        if result.get("link_count") or result.get("excluded"):
            console.print(f"  {result.get('link_count', 0)} symlinks stored as links; {result.get('excluded', 0)} "
                          f"entries excluded ({', '.join(result.get('excludes', []))})", soft_wrap=True)
        for err in result["errors"]:
            console.print(f"  [yellow]not stored[/] {escape(err['path'])}: {escape(err['reason'])}", soft_wrap=True)
        for warn in result.get("warnings", []):
            console.print(f"  [yellow]warning[/] {escape(warn['path'])}: {escape(warn['reason'])}", soft_wrap=True)
    exit_for_status(result)


@backup_app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List snapshots (aml's and Loom's own legacy backups), oldest first."""
    result = run_task(backup_tasks.list_, {"store": store_of(ctx)}, enqueue=False, wait=False, timeout=0,
                      as_json=as_json)
    assert result is not None
    if as_json:
        print_json(result)
        return
    snaps, damaged = result["snapshots"], result.get("damaged", [])
    for d in damaged:
        err_console.print(f"[red]damaged snapshot {d['backup_id']}[/] ({d['location']}): {d['reason']}; "
                          "run `backup verify` to see what it affects")
    if result.get("encrypted"):
        console.print(f"repository {escape(result['repository'])} is [bold]encrypted[/]")
    elif snaps or damaged:
        console.print(f"repository {escape(result['repository'])} is not encrypted (plain)")
    if not snaps:
        console.print(f"no snapshots in {result['repository']}")
        if damaged:
            raise typer.Exit(1)
        return
    table = new_table(title=result["repository"])
    table.add_column("id", no_wrap=True)
    for col in ("type", "time (UTC)", "files", "size", "stored", "verified", "tags"):
        table.add_column(col)
    for s in snaps:
        kind = s["backup_type"] + (f" (legacy {s['legacy_origin']})" if s["legacy"] else "")
        table.add_row(s["backup_id"], kind, s["time"], str(s["file_count"]), _human(s["total_size_bytes"]),
                      _human(s["stored_size_bytes"]), s["verify_status"] or "-", ",".join(s["tags"]))
    console.print(table)
    if damaged:
        raise typer.Exit(1)


@backup_app.command("restore")
def restore(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Option("--backup-id", help="Snapshot to restore.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Newest snapshot at or before this ISO time.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Restore here instead of over the store "
                                               "(a directory, or a redis:// URL for a keyspace).")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
    path: Annotated[list[str] | None, typer.Option("--path", help="Only paths matching this glob.")] = None,
    pattern: Annotated[str | None, typer.Option("--pattern", help="Redis keyspaces: only keys matching this glob.")]
    = None,
    exact: Annotated[bool, typer.Option("--exact/--no-exact", help="Remove files the snapshot lacks.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the changes; write nothing.")] = False,
    as_json: JsonOpt = False, enqueue: EnqueueOpt = False, wait: WaitOpt = False, timeout: TimeoutOpt = 6 * 3600.0,
) -> None:
    """Restore a snapshot (whole store, --agent, or --path) to --target or over the live store.

    Over the live store a safety snapshot is taken first; its id is printed. A Redis keyspace restores all
    keys or --pattern into itself or --target redis://..., the keys it overwrites exported first; never
    FLUSHDB.
    """
    if (backup_id is None) == (at is None):
        raise typer.BadParameter("give exactly one of --backup-id and --at")
    if target and "://" not in target:
        target = str(Path(target))
    kwargs = {"store": store_of(ctx), "backup_id": backup_id, "at": at, "target": target or None, "agent": agent,
              "paths": path or [], "exact": exact, "dry_run": dry_run, "pattern": pattern}
    result = _run(backup_tasks.restore_, kwargs, as_json, enqueue, wait, timeout)
    if result is None:
        return
    exit_if_skipped(result, "backup restore", as_json)
    if as_json:
        print_json(result)
    elif "keys_in_snapshot" in result:  # a Redis keyspace
        _print_keyspace_restore(result)
    else:
        verb = "would restore" if result["dry_run"] else "restored"
        console.print(f"{verb} [bold]{result['backup_id']}[/] into {result['target']}: "
                      f"{len(result['added'])} added, {len(result['changed'])} changed, "
                      f"{len(result['metadata'])} metadata reset, {len(result['removed'])} removed, "
                      f"{result['unchanged']} unchanged")
        if result.get("safety_backup_id"):
            console.print(f"safety snapshot taken first: [bold]{result['safety_backup_id']}[/]")
        if result["dry_run"]:
            for label in ("added", "changed", "metadata", "removed"):
                for p in result[label][:200]:
                    console.print(f"  {label:8} {p}")
        for err in result["errors"]:
            console.print(f"  [red]error[/] {err['path']}: {err['reason']}")
    exit_for_status(result)


def _print_keyspace_restore(result: dict[str, Any]) -> None:
    verb = "would write" if result["dry_run"] else "wrote"
    count = result["would_write"] if result["dry_run"] else result["written"]
    console.print(f"{verb} {count:,} keys of [bold]{result['backup_id']}[/] ({result['source']}) into "
                  f"{result['target']}: {result['overwritten']:,} overwritten, {result['expired_skipped']:,} "
                  f"skipped as expired, {result['filtered']:,} not matching", soft_wrap=True)
    if result.get("pre_restore"):
        console.print(f"the {result['pre_restore']['keys']:,} keys it overwrote are saved in "
                      f"{result['pre_restore']['path']} (backup import that file to undo)", soft_wrap=True)
    for err in result["errors"][:200]:
        console.print(f"  [red]error[/] {err['key']}: {err['reason']}", soft_wrap=True)


@backup_app.command("verify")
def verify(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(help="Report on this snapshot only.")] = None,
    read_data: Annotated[bool, typer.Option("--read-data", help="Decompress and re-hash every object.")] = False,
    subset: Annotated[str | None, typer.Option("--read-data-subset", help="e.g. 10% (rotating) or 1/7.")] = None,
    as_json: JsonOpt = False, enqueue: EnqueueOpt = False, wait: WaitOpt = False, timeout: TimeoutOpt = 6 * 3600.0,
) -> None:
    """Verify the repository: structure, and with --read-data every byte. Exit 2 on damage."""
    result = _run(verify_tasks.verify, {"store": store_of(ctx), "backup_id": backup_id, "read_data": read_data,
                                        "read_data_subset": subset}, as_json, enqueue, wait, timeout)
    if result is None:
        return
    if as_json:
        print_json(result)
    else:
        what = "structure and data" if result["read_data"] else "structure"
        console.print(f"verify ({what}{', subset ' + result['subset'] if result['subset'] else ''}): "
                      f"{styled(result['status'])}; {result['snapshots_checked']} snapshots, "
                      f"{result['packs_checked']} packs, {result['objects_read']} objects read "
                      f"({_human(result['bytes_read'])}) in {result['duration_seconds']:.2f} s")
        for p in result["errors"]:
            console.print(f"  [red]{p['kind']}[/] {p['location']}: {escape(p['message'])}", soft_wrap=True)
            if p["files"]:
                shown = ", ".join(p["files"][:10]) + (" ..." if len(p["files"]) > 10 else "")
                console.print(f"    affects {escape(shown)}", soft_wrap=True)
        for sid, state in result["verified"].items():
            if state == "failed":
                console.print(f"  snapshot {sid}: [red]failed[/]")
        _print_orphans(result.get("orphans") or {})
    exit_for_status(result)


def _print_orphans(o: dict[str, Any]) -> None:
    """verify's line about the packs in no index (killed backups' leftovers) and unused packs."""
    if o.get("packs"):
        grace_h = o["grace_seconds"] / 3600
        console.print(f"  [yellow]orphan packs[/]: {o['packs']} in no index ({_human(o['bytes'])}; oldest "
                      f"{o['oldest_age_seconds'] / 3600:.1f} h, newest {o['newest_age_seconds'] / 3600:.1f} h old), "
                      f"left by interrupted backups; {o['removable_packs']} ({_human(o['removable_bytes'])}) older "
                      f"than {grace_h:g} h: the next `backup rotate` removes them", soft_wrap=True)
    if o.get("unused_packs"):
        console.print(f"  unused packs: {o['unused_packs']} indexed packs ({_human(o['unused_bytes'])}) hold no "
                      "object any snapshot needs; `backup rotate` removes them", soft_wrap=True)


@backup_app.command("drill")
def drill(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Option("--backup-id", help="Snapshot to drill (default: the newest).")]
    = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Drill only this agent.")] = None,
    as_json: JsonOpt = False, enqueue: EnqueueOpt = False, wait: WaitOpt = False, timeout: TimeoutOpt = 6 * 3600.0,
) -> None:
    """Restore drill: restore a snapshot (or --agent) into a scratch directory, check every file against the
    manifest (size, sha256), remove the copy, record the result. Exit 2 when it fails or cannot run."""
    result = _run(drill_tasks.drill, {"store": store_of(ctx), "backup_id": backup_id, "agent": agent}, as_json,
                  enqueue, wait, timeout)
    if result is None:
        return
    emit(result, as_json, _print_drill)


def _print_drill(r: dict[str, Any]) -> None:
    what = (f" of [bold]{escape(r['backup_id'])}[/]" if r.get("backup_id") else "") + (
        f" agent {escape(r['agent'])}" if r.get("agent") else "")
    if r["drill_status"] == "error":
        console.print(f"restore drill{what}: {styled('error')}: could not run: {escape(str(r['error']))}",
                      soft_wrap=True)
        return
    verdict = "[green]passed[/]" if r["passed"] else "[red]failed[/]"
    console.print(f"restore drill{what}: {verdict}; {r['files_checked']:,} of {r['files_expected']:,} files "
                  f"checked (size and sha256), {_human(r['bytes_checked'])} read back, in "
                  f"{r['duration_seconds']:.2f} s (restore {r['restore_seconds']:.2f} s, check "
                  f"{r['check_seconds']:.2f} s); scratch copy {'removed' if r['scratch_removed'] else 'NOT removed'}",
                  soft_wrap=True)
    for f in r["failures"]:
        console.print(f"  [red]failed[/] {escape(f['path'])}: {escape(f['reason'])}", soft_wrap=True)
    more = r.get("failures_total", len(r["failures"])) - len(r["failures"])
    if more > 0:
        console.print(f"  ... and {more:,} more (see --json or the catalog's restore_drills)")


@backup_app.command("rotate")
def rotate(
    ctx: typer.Context,
    keep_last: Annotated[int | None, typer.Option("--keep-last")] = None,
    keep_hourly: Annotated[int | None, typer.Option("--keep-hourly")] = None,
    keep_daily: Annotated[int | None, typer.Option("--keep-daily")] = None,
    keep_weekly: Annotated[int | None, typer.Option("--keep-weekly")] = None,
    keep_monthly: Annotated[int | None, typer.Option("--keep-monthly")] = None,
    keep_yearly: Annotated[int | None, typer.Option("--keep-yearly")] = None,
    keep_within: Annotated[str | None, typer.Option("--keep-within", help="e.g. 7d, 1y2m")] = None,
    retention_days: Annotated[float | None, typer.Option("--retention-days")] = None,
    max_backups: Annotated[int | None, typer.Option("--max-backups")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the decisions only.")] = False,
    as_json: JsonOpt = False, enqueue: EnqueueOpt = False, wait: WaitOpt = False, timeout: TimeoutOpt = 6 * 3600.0,
) -> None:
    """Apply a retention policy (restic's --keep-* rules; default the seeds' 30 days / 100 backups), then prune."""
    keep = {"keep_last": keep_last, "keep_hourly": keep_hourly, "keep_daily": keep_daily,
            "keep_weekly": keep_weekly, "keep_monthly": keep_monthly, "keep_yearly": keep_yearly,
            "keep_within": keep_within, "retention_days": retention_days, "max_backups": max_backups}
    result = _run(backup_tasks.rotate_, {"store": store_of(ctx), "keep": keep, "dry_run": dry_run}, as_json,
                  enqueue, wait, timeout)
    if result is None:
        return
    exit_if_skipped(result, "backup rotate", as_json)
    if as_json:
        print_json(result)
        exit_for_status(result)
        return
    verb = "would remove" if result["dry_run"] else "removed"
    console.print(f"kept {len(result['kept'])} snapshots, {verb} {len(result['removed'])}")
    for d in result["kept"]:
        console.print(f"  keep   {d['backup_id']}  {d['time']}  ({', '.join(d['reasons'])})")
    for d in result["removed"]:
        console.print(f"  remove {d['backup_id']}  {d['time']}  ({', '.join(d['reasons'])})")
    prune = result.get("prune")
    if prune:
        console.print(f"repository {_human(prune['bytes_before'])} -> {_human(prune['bytes_after'])}: "
                      f"{prune['packs_deleted']} packs deleted, {prune['packs_repacked']} repacked")
        if prune.get("unindexed_packs_deleted") or prune.get("unindexed_packs_kept"):
            gone = "would be removed" if result["dry_run"] else "removed"
            console.print(f"orphan packs (in no index): {prune['unindexed_packs_deleted']} "
                          f"({_human(prune['unindexed_bytes_deleted'])}) {gone}, "
                          f"{prune['unindexed_packs_kept']} ({_human(prune['unindexed_bytes_kept'])}) kept: younger "
                          f"than {prune['orphan_grace_seconds'] / 3600:g} h (a backup may still be writing them)",
                          soft_wrap=True)
    exit_for_status(result)


@backup_app.command("auto")
def auto(ctx: typer.Context, exclude: ExcludeOpt = None, exclude_file: ExcludeFileOpt = None,
         as_json: JsonOpt = False, enqueue: EnqueueOpt = False, wait: WaitOpt = False,
         timeout: TimeoutOpt = 6 * 3600.0) -> None:
    """The seeds' daily job: incremental backup (full when none exists), then rotate."""
    result = _run(backup_tasks.auto, {"store": store_of(ctx), "excludes": _excludes(exclude, exclude_file) or None},
                  as_json, enqueue, wait, timeout)
    if result is None:
        return
    exit_if_skipped(result, "backup auto", as_json)
    if as_json:
        print_json(result)
    else:
        b, r = result["backup"], result["rotate"]
        console.print(f"snapshot [bold]{b['backup_id']}[/] ({b['backup_type']}, {b['file_count']} files); "
                      f"rotate kept {len(r['kept'])}, removed {len(r['removed'])}")
    exit_for_status(result)


def _keyspace_only(store: str, command: str) -> None:
    if "://" not in store:
        raise typer.BadParameter(f"backup {command} is for Redis keyspaces (aml redis://host:port/db backup "
                                 f"{command} FILE); file stores use backup create / restore")


@backup_app.command("export")
def export_keyspace(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The JSON file to write.")],
    pattern: Annotated[str | None, typer.Option("--pattern", help="Only keys matching this glob.")] = None,
    as_json: JsonOpt = False, enqueue: EnqueueOpt = False, wait: WaitOpt = False, timeout: TimeoutOpt = 3600.0,
) -> None:
    """Export a Redis keyspace to a plain JSON file a person can read (every type, non-UTF-8 bytes as
    base64, absolute expiry times)."""
    from tasks import keyspace as keyspace_tasks

    store = store_of(ctx)
    _keyspace_only(store, "export")
    result = _run(keyspace_tasks.export, {"store": store, "path": str(path.absolute()), "pattern": pattern},
                  as_json, enqueue, wait, timeout)
    if result is None:
        return

    def render(r: dict[str, Any]) -> None:
        types = ", ".join(f"{k} {v:,}" for k, v in sorted(r["types"].items()))
        console.print(f"exported {r['keys']:,} keys ({types or 'none'}) to {r['path']} ({_human(r['bytes'])})",
                      soft_wrap=True)

    emit(result, as_json, render)


@backup_app.command("import")
def import_keyspace(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A file written by backup export (or MemorySnapshot).")],
    pattern: Annotated[str | None, typer.Option("--pattern", help="Only keys matching this glob.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write nothing; say what would be written.")] = False,
    as_json: JsonOpt = False, enqueue: EnqueueOpt = False, wait: WaitOpt = False, timeout: TimeoutOpt = 3600.0,
) -> None:
    """Import a keyspace file into a Redis database: each key replaced whole, expiry times kept (keys whose
    time has passed are skipped), the keys it overwrites saved first; never FLUSHDB."""
    from tasks import keyspace as keyspace_tasks

    store = store_of(ctx)
    _keyspace_only(store, "import")
    result = _run(keyspace_tasks.import_, {"store": store, "path": str(path.absolute()), "pattern": pattern,
                                           "dry_run": dry_run}, as_json, enqueue, wait, timeout)
    if result is None:
        return

    def render(r: dict[str, Any]) -> None:
        verb, count = ("would write", r["would_write"]) if dry_run else ("wrote", r["written"])
        console.print(f"{verb} {count:,} keys from {path} (exported {r.get('created') or '?'} from "
                      f"{r.get('source') or '?'}): {r['overwritten']:,} overwritten, "
                      f"{r['expired_skipped']:,} skipped as expired, {r['filtered']:,} not matching", soft_wrap=True)
        if r.get("pre_restore"):
            console.print(f"the {r['pre_restore']['keys']:,} keys it overwrote are saved in "
                          f"{r['pre_restore']['path']} (backup import that file to undo)", soft_wrap=True)

    emit(result, as_json, render, command="backup import")
