"""Every command and flag the README and its docs/ pages name exists: their `python -m` programs,
their flags, the flagfiles and repository paths they name. (The README's Python examples run in test_api and test_experiment; the two
fresh-machine commands are CI's own.)"""

import importlib.util
import os
import re

from absl import flags

from generalist_tf import cli
from generalist_tf.experiments import bench, drift, frontier, repro
from tests.helpers_train import ROOT

# Flags of other tools that the README shows: pytest-xdist's and TensorBoard's.
OTHER_TOOLS = {"dist": "pytest", "logdir": "tensorboard"}
# What absl's parser and `app.run` give every program.
ABSL = {"flagfile", "undefok", "help", "helpfull", "helpshort", "only_check_args"}


def documents() -> dict[str, str]:
    """README.md and every page of docs/, by path from the root."""
    import glob

    paths = ["README.md"] + sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
    )
    out = {}
    for path in paths:
        with open(os.path.join(ROOT, path)) as f:
            out[path] = f.read()
    return out


def readme() -> str:
    """The README and its docs/ pages, one text: every check below covers them all."""
    return "\n".join(documents().values())


def program_flags() -> dict[str, set[str]]:
    """Each program's flag names (absl's own, `ABSL`, included)."""
    out = {}
    for module, define in (
        ("generalist_tf.main", cli.define_flags),
        ("generalist_tf.experiments.bench", bench.define_flags),
        ("generalist_tf.experiments.repro", repro.define_flags),
        ("generalist_tf.experiments.frontier", frontier.define_flags),
        ("generalist_tf.experiments.drift", drift.define_flags),
    ):
        values = flags.FlagValues()
        define(values)
        out[module] = set(values) | ABSL
    return out


def named(text: str) -> set[str]:
    """The flags named in `text`, `--noX` read as `X` when X is a boolean flag name."""
    return set(re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", text))


def resolve(name: str, known: set[str]) -> str:
    return name[2:] if name.startswith("no") and name not in known and name[2:] in known else name


def commands(text: str) -> list[tuple[str, str]]:
    """(module, arguments) of every `python -m generalist_tf...` command in the README."""
    return re.findall(r"python -m (generalist_tf[\w.]*)([^`\n]*)", text)


def test_every_program_the_readme_runs_exists():
    modules = {module for module, _ in commands(readme())}
    assert {"generalist_tf.main", "generalist_tf.experiments.repro"} <= modules
    missing = [m for m in sorted(modules) if importlib.util.find_spec(m) is None]
    assert not missing, f"README runs modules that do not exist: {missing}"


def test_every_command_uses_flags_its_program_defines():
    known = program_flags()
    problems = []
    for module, arguments in commands(readme()):
        if module not in known:
            problems.append(f"{module}: no flag list for this program in the test")
            continue
        for name in named(arguments):
            if resolve(name, known[module]) not in known[module]:
                problems.append(f"python -m {module} ... --{name}")
    assert not problems, "\n".join(problems)


def test_every_flag_the_readme_names_is_defined_somewhere():
    known = set().union(*program_flags().values()) | set(OTHER_TOOLS)
    unknown = sorted(name for name in named(readme()) if resolve(name, known) not in known)
    assert not unknown, f"README names flags no program defines: {unknown}"


def test_every_flagfile_the_readme_names_exists():
    paths = set(re.findall(r"--flagfile=(flags/[\w./-]+\.cfg)", readme()))
    assert "flags/quickstart.cfg" in paths
    missing = sorted(p for p in paths if not os.path.isfile(os.path.join(ROOT, p)))
    assert not missing, f"README names flagfiles that do not exist: {missing}"


# A repository path written in code or tests: `dir/.../name.md|cfg`, optionally followed by
# `, "Heading"` (a section of that document).
PATH_REFERENCE = re.compile(r'(?<![\w<{/.-])((?:[\w.-]+/)+[\w.-]+\.(?:md|cfg))\b(?:, "([^"]+)")?')


# Documents the code writes (into an export) rather than reads from the repository.
WRITTEN_DOCUMENTS = {"MODEL_CARD.md"}


def test_every_repository_path_the_code_names_exists_with_its_section():
    import glob

    top = set(os.listdir(ROOT))
    missing = []
    sources = glob.glob(f"{ROOT}/generalist_tf/**/*.py", recursive=True)
    sources += glob.glob(f"{ROOT}/tests/*.py")
    for source in sources:
        with open(source) as f:
            text = f.read()
        for match in PATH_REFERENCE.finditer(text):
            path, section = match.groups()
            if path.split("/")[0] not in top or "does_not_exist" in path:
                continue  # a placeholder (`export_dir/...`) or a deliberately missing file
            full = os.path.join(ROOT, path)
            if not os.path.exists(full):
                missing.append((os.path.relpath(source, ROOT), path))
            elif section:
                with open(full) as f:
                    headings = [line.lstrip("#").strip() for line in f if line.startswith("#")]
                if section not in headings:
                    missing.append((os.path.relpath(source, ROOT), f"{path}: {section}"))
        for name in re.findall(r"(?<![\w/<>.-])([A-Z][A-Z_]*\.md)\b", text):
            if name not in WRITTEN_DOCUMENTS and name not in top:
                missing.append((os.path.relpath(source, ROOT), name))
    assert not missing, missing
    assert PATH_REFERENCE.search('see generalist_tf/docs/algorithm.md, "Initialisation"')


def test_every_repository_path_and_link_the_documents_name_exists():
    top = set(os.listdir(ROOT))
    missing = []
    for path, text in documents().items():
        base = os.path.dirname(os.path.join(ROOT, path))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
        for link in re.findall(r"\]\(([^)#\s]+)\)", prose):
            if not link.startswith(("http://", "https://")) and not os.path.exists(
                os.path.join(base, link)
            ):
                missing.append((path, link))
        for name in re.findall(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|md|cfg|json|png|txt|sh))`", text):
            if name.split("/")[0] in top and not os.path.exists(os.path.join(ROOT, name)):
                missing.append((path, name))
    assert not missing, missing
    assert len(documents()) >= 8  # the README and its pages
