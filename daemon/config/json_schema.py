"""The policy file format as a JSON Schema (draft 2020-12), for editors and `volkeep schema`.

The schema is generated from the converters the loader itself runs, never written by hand:
a record's keys, its required and mutually exclusive keys, a list's bounds, a choice's
words and an integer's bounds are read from the arguments each converter was built with
(`record`, `list_of`, `choice`, `integer`... keep them in their closure); what a key means
and an example of it come from the `..._HELP` table beside the converter's table in
`schema` (the help of `RETENTION` is `RETENTION_HELP`). Converters written as plain
functions are described once here, in LEAVES (single values) and COMPOSITES (values made
of other converters). A converter described nowhere is an error, not a silent gap.

config/volkeep.schema.json is this schema, written by `volkeep schema`; a test fails when
it is stale. A JSON Schema sees one file as plain data: BEYOND_THE_SCHEMA lists what only
the loader (`volkeep validate`) checks.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from daemon.config import schema
from daemon.config.assemble import SUPPORTED_VERSION, TOP_LEVEL, section, version
from daemon.config.monitoring import (
    APPRISE_URLS,
    METRICS,
    SECRET_SOURCE,
    apprise_url,
    apprise_urls,
    environment_name,
    listen_address,
    metrics_settings,
    ping_url,
    secret,
    textfile,
)
from daemon.config.nodes import Converter, boolean, non_empty_string, string
from daemon.config.schedule import CRON_MACROS, DURATION
from daemon.config.schema import (
    AGE,
    ALGORITHM,
    ARGUMENTS,
    COMPRESSION,
    COMPRESSION_LEVELS,
    DAEMON,
    HOOKS,
    POLICY_EXACTLY_ONE_OF,
    POLICY_HELP,
    POLICY_REQUIRED,
    POLICY_STORAGE_HELP,
    RUN_HOOK,
    STORAGE_FIELDS,
    STORAGE_HELP,
    STORAGE_REQUIRED,
    STORAGE_TYPE,
    STORAGE_TYPE_HELP,
    STORAGE_TYPES,
    TOP_LEVEL_HELP,
    Help,
    age_encryption,
    age_recipient,
    compression,
    drilled_host,
    policy_fields,
    run_hook,
    volume_hooks,
)
from daemon.config.values import (
    BUCKET_NAME,
    IMAGE_REFERENCE,
    NAME,
    STORAGE_CLASSES,
    VOLUME_NAME,
    absolute_path,
    bucket_name,
    endpoint_url,
    exclude_pattern,
    host_name,
    image_reference,
    key_prefix,
    label_selector,
    storage_class,
    timezone,
    volume_name,
)
from daemon.config.values import schedule as schedule_text

JsonSchema = dict[str, Any]

# What the loader checks and a JSON Schema of one file cannot say (or says only loosely).
BEYOND_THE_SCHEMA = (
    "the fields of a cron expression, and that it fires at all",
    "that a time zone is known to this host",
    "that a policy's storages are defined (in this file or another one)",
    "that a policy or storage name is defined once across files, and `daemon:` in one file",
    "a key written twice in one mapping",
    "durations and intervals of zero where one longer than zero is needed",
    "that age recipients are valid public keys, and that no secret key is in the text",
    "a storage listed twice in a policy's list of storages",
    "that volume_hooks name volumes of `volumes`, and drill.storage a storage of the policy",
    "empty, '.' and '..' segments in an S3 key prefix",
    "that a metrics address other machines can reach has a token or public: true",
    "that the files and environment variables named by {file: ...} and {env: ...} hold a value",
)

END = r"(?![\s\S])"  # the very end of the text: a Python `$` also matches before a last "\n"
# `DURATION` with its named groups made plain (ECMA-262 spells them otherwise), not empty.
DURATION_PATTERN = "(?=[0-9])" + re.sub(r"\(\?P<\w+>", "(?:", DURATION.pattern)
CRON_PATTERN = r"[^@\s]\S*(?:\s+\S+){4}"  # five fields; a first word with "@" is a macro
SCHEDULE_PATTERN = (
    rf"^\s*(?:@every\s+{DURATION_PATTERN}"
    rf"|{'|'.join(re.escape(macro) for macro in CRON_MACROS)}|{CRON_PATTERN})\s*$"
)


def anchored(pattern: re.Pattern[str]) -> str:
    """Given a regular expression the loader full-matches, return it as a JSON Schema
    pattern (which matches anywhere unless anchored)."""
    return f"^(?:{pattern.pattern})$"


def text(pattern: str) -> JsonSchema:
    """Given a JSON Schema pattern, return the schema of strings that match it."""
    return {"type": "string", "pattern": pattern}


NAMES = text(anchored(NAME))
SOME_TEXT = text(r"\S")

# The converters written as plain functions of single values.
LEAVES: dict[Converter[Any], JsonSchema] = {
    string: {"type": "string"},
    non_empty_string: SOME_TEXT,
    boolean: {"type": "boolean"},
    version: {"type": "integer", "const": SUPPORTED_VERSION},
    volume_name: text(anchored(VOLUME_NAME)),
    schedule_text: text(SCHEDULE_PATTERN),
    timezone: SOME_TEXT,
    absolute_path: text("^/"),
    exclude_pattern: {**SOME_TEXT, "not": text(rf"^/|(?:^|/)\.\.(?:/|{END})")},
    label_selector: text(r"^[^=]*[^=\s]"),  # a key that is not blank, then "=value" or not
    host_name: NAMES,
    drilled_host: {"anyOf": [NAMES, {"const": "*"}]},
    image_reference: text(anchored(IMAGE_REFERENCE)),
    bucket_name: {**text(anchored(BUCKET_NAME)), "not": text(r"\.\.")},
    key_prefix: {"type": "string"},
    storage_class: {"type": "string", "enum": list(STORAGE_CLASSES)},
    endpoint_url: text(r"^https?://(?![^/]*@)[\s\S]"),  # no user:password@ before the host
    age_recipient: SOME_TEXT,
    listen_address: {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 65535},
            text(r"^(?:(?:\[[^\]]+\]|[^:\[\]]+):)?\d+$"),  # HOST:PORT, [IPv6]:PORT or PORT
        ]
    },
    textfile: text(r"^/[\s\S]*[^/]\.prom/*$"),  # the loader reads it as a Path: a suffix .prom
    apprise_url: text("://"),
    environment_name: text(r"^[A-Za-z_][A-Za-z0-9_]*$"),
    ping_url: text(r"^https?://[^/]"),
}


def help_keywords(help: Help | None) -> JsonSchema:
    """Given a key's help, return its description and example (nothing without help)."""
    return {} if help is None else {"description": help.text, "examples": [help.example]}


def built_with(converter: Converter[Any]) -> tuple[str, Mapping[str, Any]]:
    """Given a converter, return the name of the function that built it and the arguments
    its closure keeps ("record.<locals>.convert", {"fields": ..., "required": ...}); the
    name is "" for a converter that is a plain function."""
    name = getattr(converter, "__qualname__", "")
    if ".<locals>." not in name:
        return "", {}
    return name, inspect.getclosurevars(converter).nonlocals


RECORD = "record.<locals>.convert"  # what `record` builds: its keys are read from its table


class SchemaGap(Exception):
    """A converter this module cannot describe: add it to LEAVES or COMPOSITES."""


class SchemaBuilder:
    """Describes converters as JSON Schemas; the record tables and other converters named
    in `schema` (RETENTION, HOOKS...) are described once, under `$defs`."""

    def __init__(self) -> None:
        self.definitions: dict[str, JsonSchema] = {}
        self.names: dict[Converter[Any], str] = {
            value: name
            for name, value in vars(schema).items()
            if name.isupper() and inspect.isfunction(value)
        }

    def describe(self, converter: Converter[Any]) -> JsonSchema:
        """Given a converter, return the schema of the values it accepts."""
        name = self.names.get(converter)
        if name is None:
            return self.inline(converter)
        return self.define(name.lower(), lambda: self.inline(converter))

    def define(self, name: str, build: Callable[[], JsonSchema]) -> JsonSchema:
        """Given a name under `$defs` and how to build its schema, build it the first time,
        and return the reference to it."""
        if name not in self.definitions:
            self.definitions[name] = {}  # taken, while its parts are described
            self.definitions[name] = build()
        return {"$ref": f"#/$defs/{name}"}

    def inline(self, converter: Converter[Any]) -> JsonSchema:
        if converter in LEAVES:
            return dict(LEAVES[converter])
        if converter in COMPOSITES:
            return COMPOSITES[converter](self)
        maker, arguments = built_with(converter)
        if maker == RECORD:
            return self.record_of(converter, self.help_of(converter))
        if maker not in BUILT:
            raise SchemaGap(f"no JSON Schema for the converter {maker or converter!r}")
        return BUILT[maker](self, arguments)

    def record(
        self,
        fields: Mapping[str, Converter[Any]],
        *,
        required: Collection[str] = (),
        exactly_one_of: Collection[str] = (),
        help: Mapping[str, Help],
    ) -> JsonSchema:
        """Given a record's table and its help, return the schema of a mapping of its keys."""
        properties = {
            key: {**help_keywords(help.get(key)), **self.describe(converter)}
            for key, converter in fields.items()
            if not refuses_everything(converter)  # then the key is simply unknown
        }
        described: JsonSchema = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            described["required"] = list(required)
        if exactly_one_of:
            described["oneOf"] = [{"required": [key]} for key in exactly_one_of]
        return described

    def record_of(self, converter: Converter[Any], help: Mapping[str, Help]) -> JsonSchema:
        """Given a converter built by `record`, and its help, return its schema."""
        maker, arguments = built_with(converter)
        if maker != RECORD:
            raise SchemaGap(f"expected a record converter, got {converter!r}")
        return self.record(
            arguments["fields"],
            required=arguments["required"],
            exactly_one_of=arguments["exactly_one_of"],
            help=help,
        )

    def help_of(self, converter: Converter[Any]) -> Mapping[str, Help]:
        """Given a converter named in `schema` (RETENTION), return its help (RETENTION_HELP)."""
        name = self.names.get(converter)
        found: Mapping[str, Help] = getattr(schema, f"{name}_HELP", {}) if name else {}
        return found


def refuses_everything(converter: Converter[Any]) -> bool:
    """Given a converter, say whether it refuses any value (a key where a secret would be
    written, refused with the way to do it instead)."""
    return built_with(converter)[0] == "secret_in_policy.<locals>.convert"


def level_runs(levels: Collection[int]) -> Iterator[tuple[int, int]]:
    """Given integers, return the first and last of each run of consecutive ones."""
    ordered = sorted(levels)
    start = 0
    for index, level in enumerate(ordered):
        if index + 1 == len(ordered) or ordered[index + 1] != level + 1:
            yield ordered[start], level
            start = index + 1


def compression_levels() -> list[JsonSchema]:
    """Return the rule of each compression algorithm about the levels it takes."""
    rules = []
    for algorithm, (levels, _) in COMPRESSION_LEVELS.items():
        runs = [{"minimum": first, "maximum": last} for first, last in level_runs(levels)]
        allowed: JsonSchema = (
            {"not": {}} if not runs else runs[0] if len(runs) == 1 else {"anyOf": runs}
        )
        rules.append(
            {
                "if": {
                    "properties": {"algorithm": {"const": algorithm}},
                    "required": ["algorithm"],
                },
                "then": {"properties": {"level": allowed}},
            }
        )
    return rules


def compression_schema(builder: SchemaBuilder) -> JsonSchema:
    return {
        "anyOf": [
            builder.describe(ALGORITHM),
            {**builder.describe(COMPRESSION), "allOf": compression_levels()},
        ]
    }


def run_hook_schema(builder: SchemaBuilder) -> JsonSchema:
    return {"anyOf": [builder.describe(ARGUMENTS), builder.describe(RUN_HOOK)]}


def volume_hooks_schema(builder: SchemaBuilder) -> JsonSchema:
    return named(builder.describe(volume_name), builder.describe(HOOKS))


# The converters written as plain functions of values made of other converters.
COMPOSITES: dict[Converter[Any], Callable[[SchemaBuilder], JsonSchema]] = {
    age_encryption: lambda builder: builder.describe(AGE),
    apprise_urls: lambda builder: {**builder.describe(APPRISE_URLS), "uniqueItems": True},
    metrics_settings: lambda builder: builder.describe(METRICS),
    secret: lambda builder: builder.describe(SECRET_SOURCE),
    compression: compression_schema,
    run_hook: run_hook_schema,
    volume_hooks: volume_hooks_schema,
}


def integer_schema(builder: SchemaBuilder, arguments: Mapping[str, Any]) -> JsonSchema:
    described: JsonSchema = {"type": "integer"}
    for bound in ("minimum", "maximum"):
        if arguments[bound] is not None:
            described[bound] = arguments[bound]
    return described


def duration_schema(builder: SchemaBuilder, arguments: Mapping[str, Any]) -> JsonSchema:
    seconds = {"type": "integer", "minimum": 0 if arguments["allow_zero"] else 1}
    return {"anyOf": [seconds, text(rf"^\s*{DURATION_PATTERN}\s*$")]}


def list_schema(builder: SchemaBuilder, arguments: Mapping[str, Any]) -> JsonSchema:
    described: JsonSchema = {"type": "array", "items": builder.describe(arguments["item"])}
    if arguments["non_empty"]:
        described["minItems"] = 1
    if arguments["unique"]:
        described["uniqueItems"] = True
    return described


def policy_storage_schema(builder: SchemaBuilder, arguments: Mapping[str, Any]) -> JsonSchema:
    entry = builder.record_of(arguments["entry"], POLICY_STORAGE_HELP)
    return {"anyOf": [builder.describe(arguments["reference"]), entry]}


def policy_storages_schema(builder: SchemaBuilder, arguments: Mapping[str, Any]) -> JsonSchema:
    reference = builder.describe(arguments["reference"])
    return {"anyOf": [reference, builder.describe(arguments["several"])]}


# The converters built by a function, by the name of what they are in that function.
BUILT: dict[str, Callable[[SchemaBuilder, Mapping[str, Any]], JsonSchema]] = {
    "list_of.<locals>.convert": list_schema,
    "choice.<locals>.convert": lambda builder, arguments: {
        "type": "string",
        "enum": list(arguments["options"]),
    },
    "integer.<locals>.convert": integer_schema,
    "duration.<locals>.convert": duration_schema,
    "seconds.<locals>.convert": lambda builder, arguments: builder.describe(
        arguments["convert_duration"]
    ),
    "storage_reference.<locals>.convert": lambda builder, arguments: NAMES,
    "policy_storages.<locals>.convert": policy_storages_schema,
    "policy_storages.<locals>.one": policy_storage_schema,
    "written_or_read.<locals>.convert": lambda builder, arguments: {
        "anyOf": [builder.describe(arguments["plain"]), builder.describe(SECRET_SOURCE)]
    },
}


def named(names: JsonSchema, value: JsonSchema) -> JsonSchema:
    """Given the schema of the names and of the values of a mapping, return its schema."""
    return {"type": "object", "propertyNames": names, "additionalProperties": value}


def storage_schema(builder: SchemaBuilder) -> JsonSchema:
    """Return the schema of one storage: the keys it takes depend on its `type`."""
    kinds = [
        {
            "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
            "then": builder.record(
                STORAGE_FIELDS[kind], required=STORAGE_REQUIRED[kind], help=STORAGE_HELP[kind]
            ),
        }
        for kind in STORAGE_TYPES
    ]
    storage_type = {**help_keywords(STORAGE_TYPE_HELP), **builder.describe(STORAGE_TYPE)}
    return {
        "type": "object",
        "properties": {"type": storage_type},
        "required": ["type"],
        "allOf": kinds,
    }


def policy_schema(builder: SchemaBuilder) -> JsonSchema:
    return builder.record(
        policy_fields(()),
        required=POLICY_REQUIRED,
        exactly_one_of=POLICY_EXACTLY_ONE_OF,
        help=POLICY_HELP,
    )


# What each section of the top level holds: `assemble` reads them across files.
SECTIONS: dict[str, Callable[[SchemaBuilder], JsonSchema]] = {
    "daemon": lambda builder: builder.describe(DAEMON),
    "storage": lambda builder: named(
        NAMES, builder.define("storage", lambda: storage_schema(builder))
    ),
    "policies": lambda builder: named(
        NAMES, builder.define("policy", lambda: policy_schema(builder))
    ),
}


def policy_file_schema() -> JsonSchema:
    """Return the JSON Schema (draft 2020-12) of one policy file."""
    builder = SchemaBuilder()
    properties = {}
    for key, converter in TOP_LEVEL.items():
        if converter is section and key not in SECTIONS:
            raise SchemaGap(f"no JSON Schema for the section {key!r}")
        described = SECTIONS[key](builder) if converter is section else builder.describe(converter)
        properties[key] = {**help_keywords(TOP_LEVEL_HELP.get(key)), **described}
    beyond = "; ".join(BEYOND_THE_SCHEMA)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "volkeep policy file",
        "description": (
            "What to back up, where, when, and which archives to keep. `volkeep validate` "
            f"also checks what this schema does not: {beyond}."
        ),
        "type": "object",
        "properties": properties,
        "required": ["version"],
        "additionalProperties": False,
        "$defs": dict(sorted(builder.definitions.items())),
    }


def policy_file_schema_text() -> str:
    """Return the JSON Schema of a policy file as the text of config/volkeep.schema.json."""
    return json.dumps(policy_file_schema(), indent=2, ensure_ascii=False) + "\n"
