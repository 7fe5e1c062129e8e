"""A deduplicated archive's bulk (its packs and its recipe) goes to the S3 storage's
`storage_class`, as a one-file archive's body does; the small records every list, restore
and backup reads (manifest, chunk index and config, drill record, host record) stay
STANDARD."""

from __future__ import annotations

import os

from tests.e2e.conftest import mountpoint


def kind_of(key: str) -> str:
    """Given an object's key, return what it is: pack, index, config, recipe, manifest…"""
    if "/_chunks/" in key:
        return key.split("/_chunks/", 1)[1].split("/", 1)[0]
    return key.rsplit(".", 2)[-2]  # `<id>.recipe.zst`, `<id>.manifest.json`, `.volkeep-host.json`


def test_storage_class_goes_to_packs_and_recipes_not_to_indexes_or_manifests(
    api, volumes, workspace, s3_bucket
):
    source = volumes("classed")
    root = mountpoint(api, source)
    (root / "data").write_bytes(os.urandom(3 << 20))
    (root / "notes.txt").write_text("first\n")
    workspace.write_config(
        {"app": {"volumes": [source], "storage": ["offsite"]}},
        storages={"offsite": {**s3_bucket.storage(), "storage_class": "STANDARD_IA"}},
    )
    backup = workspace.run("backup", "app")
    assert backup.returncode == 0, backup.stderr
    drill = workspace.run("drill", "app")
    assert drill.returncode == 0, drill.stdout + drill.stderr

    client = s3_bucket.server.client()
    classes: dict[str, set[str | None]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name):
        for item in page.get("Contents", []):
            head = client.head_object(Bucket=s3_bucket.name, Key=item["Key"])
            classes.setdefault(kind_of(item["Key"]), set()).add(head.get("StorageClass"))
    assert classes == {
        "packs": {"STANDARD_IA"},
        "recipe": {"STANDARD_IA"},
        "index": {None},
        "config": {None},
        "manifest": {None},
        "drill": {None},
        "volkeep-host": {None},
    }
