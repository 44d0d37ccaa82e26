#!/usr/bin/env python3
"""Checks that Cargo.toml's rust-version is true: at least the rust-version that every package
the library depends on (normal dependencies, every feature, this machine's target) declares.
Clippy's incompatible_msrv lint checks the crate's own code against the same number."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parent.parent


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


declared = tomllib.loads((root / "Cargo.toml").read_text())["package"]["rust-version"]
host = next(
    line.split(": ")[1]
    for line in subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout.splitlines()
    if line.startswith("host: ")
)
tree = subprocess.run(
    ["cargo", "tree", "-e", "normal", "--all-features", "--target", host, "--prefix", "none"],
    capture_output=True, text=True, check=True, cwd=root,
).stdout
used = {tuple(line.split(" (")[0].split(" v")) for line in tree.splitlines() if line.strip()}
metadata = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1"],
    capture_output=True, text=True, check=True, cwd=root,
).stdout)
needs = sorted(
    ((p["rust_version"], p["name"], p["version"]) for p in metadata["packages"]
     if (p["name"], p["version"]) in used and p.get("rust_version")),
    key=lambda r: version(r[0]),
)
highest = needs[-1]
if version(highest[0]) > version(declared):
    print(f"rust-version = {declared} is not true: {highest[1]} {highest[2]} needs Rust {highest[0]}")
    sys.exit(1)
print(f"rust-version = {declared} holds: the most any dependency needs is {highest[0]} ({highest[1]} {highest[2]})")
