"""Version floors are a record of what the tests ran on (docs/install.md), and the code needs nothing newer
than them nor anything private of its dependencies."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _floors() -> dict[str, str]:
    """package -> floor, from every requirement string in setup.py."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[a-z,]+\])?>=([0-9][0-9.]*)(,<[0-9][0-9.]*)?", node.value)
            if m:
                found[m.group(1)] = m.group(3)
    return found


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def test_beam_range_holds_the_tested_and_the_pinned_versions():
    """setup.py declares the Beam range the tests run against (a floor and a cap); the worker image pins a version
    inside it, and the Beam these tests run on is inside it."""
    text = open(os.path.join(ROOT, "setup.py")).read()
    m = re.search(r'"apache-beam\[gcp\]>=([0-9.]+),<([0-9.]+)"', text)
    assert m, "setup.py must declare apache-beam with a floor and a cap"
    floor, cap = _version(m.group(1)), _version(m.group(2))
    image = re.search(r"^FROM apache/beam_python[0-9.]+_sdk:([0-9.]+)$",
                      open(os.path.join(ROOT, "docker", "Dockerfile.beam")).read(), re.M)
    assert image and floor <= _version(image.group(1)) < cap, image and image.group(1)
    try:
        import apache_beam
    except ImportError:
        return
    assert floor <= _version(apache_beam.__version__) < cap, apache_beam.__version__


def test_every_floor_is_recorded_in_the_tested_versions_table():
    text = open(os.path.join(ROOT, "docs", "install.md")).read()
    table = text[text.index("## Tested versions"):]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    recorded = {}
    for names, floors in rows:
        for name, floor in zip([n.strip() for n in names.split(",")], [f.strip() for f in floors.split(",")]):
            recorded[name] = floor
    floors = _floors()
    assert floors, "no floors found in setup.py"
    for package, floor in floors.items():
        assert recorded.get(package) == floor, f"setup.py says {package}>={floor}; docs/install.md records " \
                                                f"{recorded.get(package)!r}"


def test_torch_floor_has_what_the_decoder_calls():
    # model/decoder.py passes enable_gqa= to scaled_dot_product_attention, which PyTorch has since 2.5.
    assert "enable_gqa=" in open(os.path.join(ROOT, "model", "decoder.py")).read()
    assert _version(_floors()["torch"]) >= (2, 5)


def test_no_private_imports_from_dependencies():
    """Our code imports dependencies' public names only: a module path or name with a leading underscore, or
    transformers' internals, moves between releases without notice."""
    offenders = []
    for package in ("pipeline", "model", "launch"):
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if not name.endswith(".py"):
                continue
            path = os.path.join(ROOT, package, name)
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    top = node.module.split(".")[0]
                    if top in ("pipeline", "model", "launch"):
                        continue
                    private = any(part.startswith("_") for part in node.module.split(".")[1:])
                    private |= any(alias.name.startswith("_") for alias in node.names)
                    private |= top == "transformers" and node.module not in ("transformers",)
                    if private:
                        offenders.append(f"{package}/{name}:{node.lineno} from {node.module} import "
                                         f"{', '.join(a.name for a in node.names)}")
    assert not offenders, offenders
