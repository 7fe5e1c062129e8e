"""Reading policy files from disk into YAML node trees, and loading the Config from them.

Only PyYAML's safe loader is used, and only to compose nodes: the nodes keep the line and
column of every value, so that each problem can point at the text the operator wrote.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from daemon.config.assemble import Document, assemble_config
from daemon.config.model import Config
from daemon.config.nodes import Invalid
from daemon.errors import ConfigError, ConfigProblem

POLICY_SUFFIXES = (".yaml", ".yml")


def load_config(path: Path) -> Config:
    """Given a policy file or a directory of them, return the Config they describe together.

    Raise ConfigError carrying every problem found in every file.
    """
    documents, problems = read_documents(path)
    config, found = assemble_config(documents)
    problems += found
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.file, p.line, p.column)))
    return config


def read_documents(path: Path) -> tuple[list[Document], list[ConfigProblem]]:
    """Given a policy file or a directory of them, return the files that compose as YAML, in
    reading order, and the problems of those that do not."""
    try:
        files = policy_files(path)
    except Invalid as error:
        return [], error.problems
    documents: list[Document] = []
    problems: list[ConfigProblem] = []
    for file in files:
        try:
            documents.append(compose_file(file))
        except Invalid as error:
            problems += error.problems
    return documents, problems


def policy_files(path: Path) -> list[Path]:
    """Given a policy file or a directory, return the files to read: the file itself, or the
    directory's *.yaml and *.yml files (hidden ones aside) in sorted order.

    Raise Invalid if the path does not exist, cannot be listed or holds no policy file.
    """
    try:
        if not path.is_dir():
            if not path.exists():
                message = (
                    "no such file or directory: give --config FILE (or $VOLKEEP_CONFIG), or "
                    "create it (`volkeep init --output FILE` drafts a policy file; install.sh "
                    "puts the example in /etc/volkeep)"
                )
                raise Invalid([whole_file_problem(path, message)])
            return [path]
        files = sorted(
            child
            for child in path.iterdir()
            if child.suffix in POLICY_SUFFIXES
            and not child.name.startswith(".")
            and child.is_file()
        )
    except OSError as error:
        raise Invalid(
            [whole_file_problem(path, f"cannot read: {error.strerror or error}")]
        ) from None
    if not files:
        message = "no policy files (*.yaml, *.yml) in this directory"
        raise Invalid([whole_file_problem(path, message)])
    return files


def compose_file(file: Path) -> Document:
    """Given a policy file, return it composed into YAML nodes.

    Raise Invalid if it cannot be read, is not UTF-8, is not valid YAML or is empty.
    """
    try:
        data = file.read_bytes()
    except OSError as error:
        raise Invalid(
            [whole_file_problem(file, f"cannot read: {error.strerror or error}")]
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line, column = position_in(data.decode("utf-8", errors="replace"), error.start)
        message = "not valid UTF-8 text"
        raise Invalid([ConfigProblem(str(file), line, column, "", message)]) from None
    root = compose_text(text, str(file))
    if root is None:
        raise Invalid(
            [whole_file_problem(file, "file is empty: expected 'version: 1' and policies")]
        )
    return Document(file, root)


def compose_text(text: str, name: str) -> yaml.Node | None:
    """Given the text of a file and its name, return its root node, or None if it holds none.

    Raise Invalid if the text is not one valid YAML document.
    """
    try:
        loader = yaml.SafeLoader(text)
        loader.name = name
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        raise Invalid([syntax_problem(name, error)]) from None
    except yaml.reader.ReaderError as error:
        line, column = position_in(text, error.position)
        message = f"invalid YAML: character {error.character!r} is not allowed ({error.reason})"
        raise Invalid([ConfigProblem(name, line, column, "", message)]) from None
    except yaml.YAMLError as error:
        raise Invalid([ConfigProblem(name, 1, 1, "", f"invalid YAML: {error}")]) from None
    except RecursionError:
        raise Invalid([ConfigProblem(name, 1, 1, "", "invalid YAML: nested too deeply")]) from None


def syntax_problem(name: str, error: yaml.MarkedYAMLError) -> ConfigProblem:
    """Given a file's name and the syntax error PyYAML found in it, return the problem."""
    mark = error.problem_mark or error.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = "invalid YAML: " + ", ".join(part for part in (error.context, error.problem) if part)
    if "'\\t'" in message:
        message += "; indent with spaces, not tabs"
    return ConfigProblem(name, line, column, "", message)


def position_in(text: str, index: int) -> tuple[int, int]:
    """Given a text and an index into it, return the 1-based line and column of that index."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def whole_file_problem(path: Path, message: str) -> ConfigProblem:
    """Given a file or directory and what is wrong with it as a whole, return the problem,
    addressed at its first line as compilers and linters do."""
    return ConfigProblem(str(path), 1, 1, "", message)
