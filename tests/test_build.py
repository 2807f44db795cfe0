"""BUILD mirrors the code: a py_library per module with its imports as deps, a py_test per test.

Bazel cannot fetch its rules on the CI machines, so this test is the check. BUILD is Starlark,
which for a BUILD file is Python syntax: it is parsed with `ast` and evaluated by a small
interpreter that understands literals, `+`, `glob()` and `requirement()`. Each module's imports
(lazy ones inside functions included) are read with `ast` as well.
"""

import ast
import dataclasses
import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_PATH = os.path.join(ROOT, "BUILD")
PACKAGE = "generalist_tf"
PIP_LOAD = "@pip//:requirements.bzl"
# Top-level import name -> the pip distribution `requirement()` names.
THIRD_PARTY = {
    "absl": "absl-py",
    "art": "adversarial-robustness-toolbox",
    "cleverhans": "cleverhans",
    "keras": "keras",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "pytest": "pytest",
    "sklearn": "scikit-learn",
    "tensorboard": "tensorboard",
    "tensorflow": "tensorflow",
    "tensorflow_datasets": "tensorflow-datasets",
}
PY_RULES = ("py_library", "py_binary", "py_test")


@dataclasses.dataclass(frozen=True)
class Requirement:
    """`requirement("name")`: a third-party dependency from the pip hub."""

    name: str


@dataclasses.dataclass(frozen=True)
class Glob:
    """`glob([...])`: the patterns, resolved against the working tree when needed."""

    patterns: tuple[str, ...]

    def files(self) -> set[str]:
        return {
            os.path.relpath(path, ROOT)
            for pattern in self.patterns
            for path in glob.glob(os.path.join(ROOT, pattern))
        }


@dataclasses.dataclass
class Rule:
    kind: str
    attrs: dict


def evaluate(node: ast.expr):
    """The value of a Starlark expression of the subset BUILD files use here."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [evaluate(element) for element in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return evaluate(node.left) + evaluate(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        (argument,) = node.args
        if node.func.id == "requirement":
            return Requirement(evaluate(argument))
        if node.func.id == "glob":
            # A list, as in Starlark, so that `[...] + glob(...)` concatenates.
            return [Glob(tuple(evaluate(argument)))]
    raise AssertionError(f"BUILD line {node.lineno}: unsupported expression {ast.unparse(node)}")


def parse_build() -> tuple[list[tuple[str, ...]], list[Rule]]:
    """The `load(...)` statements and the rule calls of BUILD, in order."""
    with open(BUILD_PATH) as f:
        tree = ast.parse(f.read(), filename=BUILD_PATH)
    loads, rules = [], []
    for statement in tree.body:
        assert isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call), (
            f"BUILD line {statement.lineno}: only rule calls belong in a BUILD file"
        )
        call = statement.value
        kind = call.func.id
        if kind == "load":
            loads.append(tuple(evaluate(argument) for argument in call.args))
            continue
        assert not call.args, f"BUILD line {call.lineno}: {kind} takes keyword arguments only"
        rules.append(Rule(kind, {kw.arg: evaluate(kw.value) for kw in call.keywords}))
    return loads, rules


def imports_of(path: str) -> tuple[set[str], set[str]]:
    """(repository modules, third-party top-level packages) that the file at `path` imports.

    Repository modules are paths relative to the root without `.py` (`generalist_tf/data`,
    `tests/helpers_train`); `from generalist_tf import data` names the module `data`.
    """
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read(), filename=path)
    local, third_party = set(), set()
    # The package's lazy public names (`generalist_tf/__init__.py`'s module `__getattr__`)
    # import `api` on first use: not a build dependency of the package (that would be a
    # cycle); targets that use `gtf.<name>` list `:api` themselves.
    lazy = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module.split(".")[0] in (PACKAGE, "tests"):
                # `from a.b import c`: the module a/b/c if there is one, else a/b's own.
                names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in (PACKAGE, "tests"):
                local.add(repository_module(name))
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return local, third_party


def repository_module(dotted: str) -> str:
    """The module file (relative, without `.py`) that importing `dotted` loads last: the longest
    prefix that is a module (`a/b/c`) or a package (`a/b/__init__`)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        path = "/".join(parts[:n])
        if os.path.isfile(os.path.join(ROOT, f"{path}.py")):
            return path
        if os.path.isfile(os.path.join(ROOT, path, "__init__.py")):
            return f"{path}/__init__"
    return "/".join(parts)  # reported as missing by `missing_deps`


def module_files() -> list[str]:
    return sorted(
        os.path.relpath(path, ROOT)
        for path in glob.glob(os.path.join(ROOT, PACKAGE, "**", "*.py"), recursive=True)
    )


def files_of_tests() -> list[str]:
    return sorted(
        os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
    )


def entirely_slow(path: str) -> bool:
    """Whether every test of the file is marked `slow` (then its py_test may be `manual`)."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and "pytestmark" in ast.unparse(statement.targets[0]):
            return "slow" in ast.unparse(statement.value)
    tests = [
        node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        and node.name.lower().startswith("test")
    ]
    return bool(tests) and all(
        any("mark.slow" in ast.unparse(decorator) for decorator in node.decorator_list)
        for node in tests
    )


@pytest.fixture(scope="module")
def build():
    return parse_build()


@pytest.fixture(scope="module")
def targets(build):
    _, rules = build
    named = {}
    for rule in rules:
        if "name" in rule.attrs:
            assert rule.attrs["name"] not in named, (
                f"two BUILD targets named {rule.attrs['name']!r}"
            )
            named[rule.attrs["name"]] = rule
    return named


@pytest.fixture(scope="module")
def owners(targets):
    """Source file -> the name of the py_library or py_pytest_main that owns it."""
    out = {}
    for name, rule in targets.items():
        if rule.kind == "py_library":
            for src in rule.attrs.get("srcs", []):
                assert src not in out, f"{src} is in the srcs of both :{out[src]} and :{name}"
                out[src] = name
    return out


def missing_deps(target: str, rule: Rule, srcs: list[str], owners: dict) -> list[str]:
    """What the deps of `target` lack for the imports of `srcs`, one message per problem."""
    deps = rule.attrs.get("deps", [])
    labels = {dep for dep in deps if isinstance(dep, str)}
    requirements = {dep.name for dep in deps if isinstance(dep, Requirement)}
    problems = []
    for src in srcs:
        local, third_party = imports_of(src)
        for module in sorted(local):
            module_path = f"{module}.py"
            owner = owners.get(module_path)
            if not os.path.exists(os.path.join(ROOT, module_path)):
                problems.append(f"{src} imports {module.replace('/', '.')}, which does not exist")
            elif owner is None:
                problems.append(f"{module_path} (imported by {src}) has no py_library")
            elif owner != target and f":{owner}" not in labels:
                problems.append(f":{target} ({src}) imports {module_path}: add :{owner}")
        for package in sorted(third_party):
            if package not in THIRD_PARTY:
                problems.append(f"{src} imports {package}: add it to THIRD_PARTY in this test")
            elif THIRD_PARTY[package] not in requirements:
                problems.append(
                    f':{target} ({src}) imports {package}: add requirement("{THIRD_PARTY[package]}")'
                )
    return problems


def test_build_loads_the_rules_and_the_pip_hub(build):
    loads, _ = build
    assert any(load[0] == PIP_LOAD and "requirement" in load[1:] for load in loads), loads
    loaded = {symbol for load in loads for symbol in load[1:]}
    _, rules = build
    used = {rule.kind for rule in rules} - {"package"}
    assert used <= loaded, f"rules used but not loaded: {sorted(used - loaded)}"


def test_every_dep_label_is_a_target(targets):
    for name, rule in targets.items():
        for dep in rule.attrs.get("deps", []):
            if isinstance(dep, str):
                assert dep.startswith(":") and dep[1:] in targets, f":{name} depends on {dep}"


def test_every_module_has_a_py_library(owners):
    missing = [path for path in module_files() if path not in owners]
    assert not missing, f"modules without a py_library in BUILD: {missing}"


def test_every_library_lists_what_its_modules_import(targets, owners):
    problems = [
        problem
        for name, rule in targets.items()
        if rule.kind == "py_library"
        for problem in missing_deps(name, rule, rule.attrs["srcs"], owners)
    ]
    assert not problems, "\n".join(problems)


def surplus_deps(target: str, rule: Rule, owners: dict) -> list[str]:
    """The deps of a library that name a library of this repository none of its sources
    imports (packages' `__init__` excepted: importing a submodule loads them). A package's
    own rule is not checked: its lazy `__getattr__` loads its submodules on first use."""
    imported = set()
    for src in rule.attrs["srcs"]:
        if not src.startswith(":"):  # a generated file (pytest's `:__test__` main)
            imported |= {f"{module}.py" for module in imports_of(src)[0]}
    used = {owners.get(path) for path in imported}
    packages = {name for path, name in owners.items() if path.endswith("__init__.py")}
    return [
        f":{target} lists {dep} but imports nothing of it: drop {dep}"
        for dep in rule.attrs.get("deps", [])
        if isinstance(dep, str) and dep[1:] not in used and dep[1:] not in packages
    ]


def test_no_library_lists_a_library_it_does_not_import(targets, owners):
    problems = [
        problem
        for name, rule in targets.items()
        if rule.kind == "py_library"
        and all(
            src.startswith(f"{PACKAGE}/") and not src.endswith("__init__.py")
            for src in rule.attrs["srcs"]
        )
        for problem in surplus_deps(name, rule, owners)
    ]
    assert not problems, "\n".join(problems)


def test_main_binary_ships_the_flagfiles(targets, owners):
    main = targets.get("main")
    assert main is not None and main.kind == "py_binary", "BUILD needs py_binary(name = 'main')"
    assert main.attrs["srcs"] == [f"{PACKAGE}/main.py"]
    assert main.attrs.get("main") == f"{PACKAGE}/main.py"
    assert main.attrs.get("data") == [Glob(("flags/*.cfg",))]
    assert main.attrs["data"][0].files(), "flags/*.cfg matches no file"
    # Its imports are checked on the library that owns main.py.
    assert f":{owners[f'{PACKAGE}/main.py']}" in main.attrs["deps"]


def test_every_test_file_has_a_py_test(targets, owners):
    tests = {}
    for name, rule in targets.items():
        if rule.kind == "py_test":
            for src in rule.attrs["srcs"]:
                if src.startswith("tests/"):
                    tests[src] = name
    missing = [path for path in files_of_tests() if path not in tests]
    assert not missing, f"test files without a py_test in BUILD: {missing}"
    conftest = owners.get("tests/conftest.py")
    assert conftest is not None, "tests/conftest.py (the 2 logical CPUs) needs a py_library"
    for path, name in tests.items():
        rule = targets[name]
        assert name == os.path.basename(path)[: -len(".py")], f"{path} is tested by :{name}"
        problems = missing_deps(name, rule, [path], owners)
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        problems += [
            problem
            for problem in surplus_deps(name, rule, owners)
            # pytest's own files, and scripts the test runs as `python -m tests.<name>`
            if not any(f"drop :{n}" in problem for n in ("__test__", "conftest"))
            and f"tests.{problem.rsplit(':', 1)[1]}" not in text
        ]
        assert not problems, "\n".join(problems)
        assert f":{conftest}" in rule.attrs["deps"], f":{name} must depend on :{conftest}"
        if "manual" in rule.attrs.get("tags", []):
            assert entirely_slow(path), f":{name} is tagged manual but has fast tests"


# The layers of the package, bottom up (docs/architecture.md): a module imports only from its own
# layer or the ones below. Listed by module path relative to generalist_tf/ (a folder: all of it).
LAYERS = (
    (
        "runtime",
        ("files", "names", "defaults", "compat", "tf_config", "distribute", "precision", "timing")
        + ("fit_timer",),
    ),
    ("attacks", ("attacks/",)),
    ("data and models", ("data", "data_files", "models")),
    ("algorithm", ("algorithm/",)),
    ("evaluation", ("evaluation/",)),
    (
        "application",
        ("evaluation/commands", "api", "checkpoints", "cli", "config/", "export")
        + ("experiment", "init_from", "main", "model_card", "tradeoff", "train", "workdir"),
    ),
    ("experiments", ("experiments/",)),
)


def layer_of(module: str) -> int:
    """The rank in LAYERS of a module path (`generalist_tf/x/y`, no `.py`); the most specific
    entry wins (`evaluation/commands` over `evaluation/`)."""
    name = module[len(PACKAGE) + 1 :]
    if name == "__init__":
        return -1  # the root package's lazy public names: importable from anywhere
    if name.endswith("/__init__"):
        name = name[: -len("__init__")]  # a subpackage's own module: its folder's layer
    matches = [
        (len(entry), rank)
        for rank, (_, entries) in enumerate(LAYERS)
        for entry in entries
        if name == entry or (entry.endswith("/") and name.startswith(entry))
    ]
    assert matches, f"{module} is in no layer of LAYERS: add it"
    return max(matches)[1]


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    offenders = []
    for path in module_files():
        module = path[: -len(".py")]
        rank = layer_of(module)
        for imported in sorted(imports_of(path)[0]):
            if imported.startswith(f"{PACKAGE}/") and layer_of(imported) > rank:
                offenders.append(f"{path} imports {imported.replace('/', '.')} from a higher layer")
    assert not offenders, "\n".join(offenders)


def test_layers_rank_the_shared_names_as_documented():
    assert layer_of("generalist_tf/evaluation/commands") > layer_of(
        "generalist_tf/evaluation/runner"
    )
    assert layer_of("generalist_tf/algorithm/learners") > layer_of("generalist_tf/attacks/pgd")
    assert layer_of("generalist_tf/main") == layer_of("generalist_tf/api")


def test_the_library_never_imports_the_experiment_drivers():
    """`generalist_tf.experiments` sits on top: no other module of the package imports it."""
    drivers = f"{PACKAGE}/experiments/"
    offenders = [
        f"{path} imports {module.replace('/', '.')}"
        for path in module_files()
        if not path.startswith(drivers)
        for module in imports_of(path)[0]
        if module.startswith(drivers)
    ]
    assert not offenders, "\n".join(offenders)


def test_imports_resolve_to_modules_and_packages():
    assert repository_module("generalist_tf.experiments.bench") == "generalist_tf/experiments/bench"
    assert repository_module("generalist_tf.experiments") == "generalist_tf/experiments/__init__"
    assert repository_module("generalist_tf.data.train_dataset") == "generalist_tf/data"
    assert repository_module("generalist_tf") == "generalist_tf/__init__"


def test_interpreter_rejects_what_it_does_not_understand():
    with pytest.raises(AssertionError, match="unsupported expression"):
        evaluate(ast.parse("select({'//conditions:default': []})", mode="eval").body)
    assert evaluate(ast.parse("['a'] + glob(['flags/*.cfg'])", mode="eval").body) == [
        "a",
        Glob(("flags/*.cfg",)),
    ]


def test_checking_a_flagfile_starts_neither_tensorflow_nor_keras():
    """`config` validates flags with pure-Python names only (`names`, `attacks.budget`, ...)."""
    import subprocess

    code = (
        "import sys, generalist_tf.config; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'matplotlib')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_every_module_with_logic_has_its_test_file():
    """Each module that defines a top-level function or class has `tests/test_<basename>.py`,
    which imports it (basenames are unique in the package)."""
    offenders = []
    for path in module_files():
        if os.path.basename(path) == "__init__.py":
            continue
        with open(os.path.join(ROOT, path)) as f:
            tree = ast.parse(f.read(), filename=path)
        if not any(
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            for node in tree.body
        ):
            continue
        module = path[: -len(".py")]
        test_path = os.path.join("tests", f"test_{os.path.basename(path)}")
        if not os.path.isfile(os.path.join(ROOT, test_path)):
            offenders.append(f"{path}: no {test_path}")
        elif module not in imports_of(test_path)[0]:
            offenders.append(f"{path}: {test_path} does not import it")
    assert not offenders, "modules without their test file:\n" + "\n".join(offenders)
