"""Reads `cargo metadata` on stdin and fails when a package of the resolved
dependency graph declares a rust-version newer than the workspace's own, so
that the README's minimum Rust version stays true as the lock file moves."""

import json
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    metadata = json.load(sys.stdin)
    members = set(metadata["workspace_members"])
    packages = {package["id"]: package for package in metadata["packages"]}
    ours = {packages[member]["rust_version"] for member in members}
    if len(ours) != 1 or None in ours:
        sys.exit("check_msrv: every workspace member must declare the same rust-version, "
                 "found %s" % sorted(str(v) for v in ours))
    declared = ours.pop()
    resolved = {node["id"] for node in metadata["resolve"]["nodes"]}
    newer = sorted(
        "%s %s needs Rust %s" % (package["name"], package["version"], package["rust_version"])
        for package_id, package in packages.items()
        if package_id in resolved and package_id not in members
        and package.get("rust_version")
        and version(package["rust_version"]) > version(declared)
    )
    if newer:
        sys.exit("check_msrv: the workspace declares rust-version %s, but\n  %s"
                 % (declared, "\n  ".join(newer)))
    print("check_msrv: %d locked packages fit rust-version %s" % (len(resolved), declared))


if __name__ == "__main__":
    main()
