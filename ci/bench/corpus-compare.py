#!/usr/bin/env python3
"""The comparison step of ci/bench/corpus.sh: reads a run's directory (OUT/ref for real dkms,
OUT/ckms for ckms, per package and module: exit, secs, files, make.log, out) and writes
OUT/results.jsonl (one object per package) and OUT/table.md (the markdown table for
docs/dkms-comparison.md), and prints the table.

A package matches when every module it ships either built on both sides into exactly the same
module file names (compression suffix included: both compress as the kernel's own modules are),
or was skipped on both (exit 77, BUILD_EXCLUSIVE), or failed on both (any other non-zero exit;
then both reasons are shown: the first error line of each make.log).
usage: corpus-compare.py [--from-store STORE] OUT
  --from-store: first write the farm's results (a `ckms farm build` store) as OUT/ckms.
"""
import json
import re
import shutil
import sys
from pathlib import Path

SIDES = ("ref", "ckms")
SKIPPED = 77
# The first line of make.log that says why a build failed: a compiler or linker error, make's
# "***", a missing command or file.
REASON = re.compile(r"(?i)\b(fatal error|error)\b[:!]|\*\*\*|command not found|No such file|not found")


def read(path, default=""):
    try:
        return path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return default


def first_reason(d):
    """Why the build in module directory d failed, in one line."""
    for name in ("make.log", "out"):
        for line in read(d / name).splitlines():
            if REASON.search(line):
                return shorten(line)
    lines = read(d / "out").splitlines()
    return shorten(lines[-1]) if lines else "no output"


def shorten(line):
    # Paths of the build directory differ between the sides and say nothing.
    line = re.sub(r"/\S*/build/", "", line.strip())
    return line if len(line) <= 200 else line[:197] + "..."


def side(out, name, package):
    """One side's result for a package: install state and one entry per module."""
    d = out / name / "pkgs" / package
    install = read(d / "install", "not run")
    result = {"install": install.splitlines()[0] if install else "not run", "modules": []}
    if result["install"] != "ok":
        result["reason"] = " ".join(install.splitlines()[1:3]) or result["install"]
        return result
    for line in read(d / "modules").splitlines():
        module, version = line.split(maxsplit=1)
        md = d / module
        if not (md / "exit").exists():
            result["modules"].append({"module": module, "version": version, "exit": None})
            continue
        exit_code = int(read(md / "exit"))
        entry = {
            "module": module,
            "version": version,
            "exit": exit_code,
            "secs": float(read(md / "secs", "0")),
            "files": read(md / "files").split(),
        }
        if exit_code != 0:
            entry["reason"] = first_reason(md)
        result["modules"].append(entry)
    return result


def outcome(m):
    if m["exit"] is None:
        return "not run"
    if m["exit"] == 0:
        return "built"
    return "skipped" if m["exit"] == SKIPPED else "failed"


def compare(ref, ckms):
    """(matches, why-not) for one package."""
    if ref["install"] != "ok":
        return None, "dkms side: " + ref["install"]
    if ckms["install"] != "ok":
        return None, "ckms side: " + ckms["install"]
    rm = {m["module"]: m for m in ref["modules"]}
    cm = {m["module"]: m for m in ckms["modules"]}
    if rm.keys() != cm.keys():
        return False, "different modules: dkms %s, ckms %s" % (sorted(rm), sorted(cm))
    if not rm:
        return False, "no dkms.conf in the package"
    why = []
    for name, r in rm.items():
        c = cm[name]
        if outcome(r) != outcome(c):
            why.append("%s: dkms %s, ckms %s" % (name, outcome(r), outcome(c)))
        elif outcome(r) == "built" and r["files"] != c["files"]:
            only_r = sorted(set(r["files"]) - set(c["files"]))
            only_c = sorted(set(c["files"]) - set(r["files"]))
            why.append("%s: only dkms %s, only ckms %s" % (name, " ".join(only_r) or "-", " ".join(only_c) or "-"))
        elif outcome(r) == "not run":
            why.append("%s: not run" % name)
    return not why, "; ".join(why)


def files_text(files):
    """`a b c (.ko.xz)` when all share a suffix, else the names."""
    suffixes = {re.sub(r"^.*?(\.ko(\.\w+)?)$", r"\1", f) for f in files}
    if len(suffixes) == 1:
        suffix = suffixes.pop()
        return "%d: %s (`%s`)" % (len(files), " ".join(f[: -len(suffix)] for f in files), suffix)
    return "%d: %s" % (len(files), " ".join(files))


def result_text(res):
    if res["install"] != "ok":
        return "**%s**: %s" % (res["install"], res.get("reason", ""))
    if not res["modules"]:
        return "no dkms.conf"
    parts = []
    for m in res["modules"]:
        o = outcome(m)
        text = files_text(m["files"]) if o == "built" else (
            "**%s (%s)**: %s" % (o, m["exit"], m.get("reason", "")) if m["exit"] is not None else "not run")
        parts.append(text if len(res["modules"]) == 1 else "%s: %s" % (m["module"], text))
    return "; ".join(parts)


def secs(res):
    return sum(m.get("secs", 0.0) for m in res["modules"])


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def env(path):
    return dict(l.split("=", 1) for l in read(path).splitlines() if "=" in l)


def from_store(store, out):
    """Writes the pairs of the farm's last run as the per-package layout of ckms's build mode
    (those for the run's kernel: a store may hold a matrix of kernels)."""
    kernel = env(out / "run.env").get("kernel")
    for cell in json.loads((store / "matrix.json").read_text()):
        entry = store / "pairs" / cell["key"]
        r = json.loads((entry / "result.json").read_text())
        if kernel and r["kernel"] != kernel:
            continue
        package = r["source"].get("package") or r["source"]["given"].removeprefix("deb:")
        d = out / "ckms" / "pkgs" / package
        md = d / r["module"]
        md.mkdir(parents=True, exist_ok=True)
        (d / "install").write_text("ok\n")
        with open(d / "modules", "a") as f:
            f.write("%s %s\n" % (r["module"], r["version"]))
        (md / "exit").write_text("%d\n" % r["exit_code"])
        (md / "secs").write_text("%.2f\n" % r["seconds"])
        files = sorted(Path((m.get("signed") or m["unsigned"])["file"]).name for m in r["modules"])
        (md / "files").write_text("".join(f + "\n" for f in files))
        if (entry / "make.log").exists():
            shutil.copy(entry / "make.log", md / "make.log")
        (md / "out").write_text((r.get("reason") or "") + "\n")


def main():
    args = sys.argv[1:]
    if args[:1] == ["--from-store"]:
        from_store(Path(args[1]), Path(args[2]))
        args = args[2:]
    out = Path(args[0])
    run = env(out / "run.env")
    corpus = json.loads((out / "corpus.json").read_text())
    ref_env = read(out / "ref" / "env")
    rows, records = [], []
    totals = {"packages": 0, "match": 0, "differ": 0, "n/a": 0, "ref": 0.0, "ckms": 0.0}
    names = sorted(p.name for p in (out / "ckms" / "pkgs").iterdir()) if (out / "ckms" / "pkgs").is_dir() else []
    names = sorted(set(names) | set(p.name for p in (out / "ref" / "pkgs").glob("*") if p.is_dir()))
    versions = {p["name"]: p["version"] for p in corpus["packages"]}
    for package in names:
        ref, ckms = side(out, "ref", package), side(out, "ckms", package)
        same, why = compare(ref, ckms)
        totals["packages"] += 1
        totals["match" if same else ("n/a" if same is None else "differ")] += 1
        totals["ref"] += secs(ref)
        totals["ckms"] += secs(ckms)
        records.append({"package": package, "version": versions.get(package), "kernel": run.get("kernel"),
                        "match": same, "why": why, "dkms": ref, "ckms": ckms})
        verdict = "yes" if same else ("n/a: " + why if same is None else "**no**: " + why)
        rows.append("| %s | %s | %s | %s | %s | %.1f | %.1f |" % (
            package, versions.get(package, "?"), cell(result_text(ref)), cell(result_text(ckms)),
            cell(verdict), secs(ref), secs(ckms)))
    with open(out / "results.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    ref_setup = env(out / "ref" / "env").get("setup_secs", "?")
    ckms_setup = env(out / "ckms" / "env").get("setup_secs", "?")
    head = [
        "Kernel `%s` (%s), %d packages, %s to %s; ckms engine %s; load %s at start, %s at end."
        % (run.get("kernel"), run.get("profile"), totals["packages"], run.get("started"), run.get("finished"),
           run.get("engine"), run.get("load_at_start"), run.get("load_at_end")),
        "Reference machine: %s." % ", ".join(l for l in ref_env.splitlines() if not l.startswith("setup_secs")),
        "",
        "| package | version | dkms result | ckms result | match | dkms s | ckms s |",
        "|---|---|---|---|---|---|---|",
    ]
    foot = [
        "| **total** | %d packages | | | %d match, %d differ, %d n/a | %.1f | %.1f |"
        % (totals["packages"], totals["match"], totals["differ"], totals["n/a"], totals["ref"], totals["ckms"]),
        "",
        "Setup, untimed in the rows: dkms %s s (apt: the kernel, dkms and all packages), ckms %s s "
        "(sources fetched and unpacked, builder image); whole run %s s."
        % (ref_setup, ckms_setup, run.get("total_secs", "?")),
    ]
    farm = env(out / "ckms" / "env")
    if "farm_cold_secs" in farm:
        foot.append(
            "ckms farm, %s packages at once: cold (empty store) %s s (exit %s, peak RSS %s KiB), warm re-run "
            "%s s (exit %s, peak RSS %s KiB); dkms one after another: %.1f s (sum of the rows)."
            % (totals["packages"], farm["farm_cold_secs"], farm.get("farm_cold_exit"),
               farm.get("farm_cold_peak_rss_kib"), farm.get("farm_warm_secs"), farm.get("farm_warm_exit"),
               farm.get("farm_warm_peak_rss_kib"), totals["ref"]))
    table = "\n".join(head + rows + foot) + "\n"
    (out / "table.md").write_text(table)
    print(table)
    return 0 if totals["differ"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
