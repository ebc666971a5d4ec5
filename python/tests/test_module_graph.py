"""The package's modules import one way, as tests/module_cycles.rs checks for
the crate's Rust modules: no module imports one that imports it back, directly
or through others. Nor does any reach into another's private names, or patch
sys.modules to make an import work.

Read from the source with ast, without importing it. Imports inside functions
count (a lazy import is still a dependency), and so do import strings such as
config.APP_ADAPTERS's, which the importer resolves at run time.
"""

import ast
import os
import re
import unittest

from .support import PACKAGE_ROOT

PACKAGE = "async_pool_worker"
# "async_pool_worker.asgi:AsgiAdapter" names the module asgi.
IMPORT_STRING = re.compile(r"^%s\.(\w+):" % PACKAGE)


def package_sources(directory=os.path.join(PACKAGE_ROOT, PACKAGE)):
    """{module name: source} of every module of the package."""
    sources = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                sources[name[:-3]] = f.read()
    return sources


def _module_of(dotted, known):
    """The package's module that the absolute name `dotted` is, or is in."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return "__init__"
    return parts[1] if parts[1] in known else None


def imports(tree, known):
    """The package's modules that the module parsed as `tree` uses."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            used.update(_module_of(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative to the package, or absolute.
            base = (PACKAGE + ("." + node.module if node.module else "")
                    if node.level == 1 else node.module or "")
            if base == PACKAGE:
                # `from . import x`: the module x, or a name of __init__.
                used.update(alias.name if alias.name in known else "__init__"
                            for alias in node.names)
            else:
                used.add(_module_of(base, known))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = IMPORT_STRING.match(node.value)
            if match and match.group(1) in known:
                used.add(match.group(1))
    used.discard(None)
    return used


def import_graph(sources):
    """{module: the package's modules it uses}, itself left out."""
    known = set(sources)
    return {name: imports(ast.parse(text), known) - {name} for name, text in sources.items()}


def find_cycle(graph):
    """One cycle of `graph` as a list of modules, first and last the same; None
    if there is none."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for used in sorted(graph.get(module, ())):
            cycle = visit(used)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def private_uses(sources):
    """(module, text) for each use of a private name of another of the
    package's modules: imported by name, or read as an attribute."""
    known = set(sources)
    found = []
    for name, text in sources.items():
        tree = ast.parse(text)
        # Local names bound to the package's modules: `from . import protocol`.
        aliases = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            relative = node.level == 1 or (node.module or "").startswith(PACKAGE)
            for alias in node.names:
                if relative and alias.name.startswith("_") and alias.name != "__version__":
                    found.append((name, "imports %s" % alias.name))
                if relative and alias.name in known:
                    aliases.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_"):
                found.append((name, "uses %s.%s" % (node.value.id, node.attr)))
    return found


class ModuleGraphTest(unittest.TestCase):
    def test_no_module_imports_one_that_imports_it_back(self):
        graph = import_graph(package_sources())
        self.assertIn("protocol", graph["server"], "the graph misses plain imports")
        self.assertIn("asgi", graph["config"], "the graph misses import strings")
        cycle = find_cycle(graph)
        self.assertIsNone(cycle, "an import cycle: %s" % " -> ".join(cycle or ()))

    def test_the_finder_sees_cycles_through_any_kind_of_import(self):
        cases = {
            "direct": {"a": "from .b import x", "b": "from .a import y"},
            "through a third": {"a": "from . import b", "b": "import async_pool_worker.c",
                                "c": "def f():\n    from .a import z"},
            "through __init__": {"__init__": "from .a import A", "a": "from . import Response"},
            "by import string": {"a": "from .b import x",
                                 "b": "X = 'async_pool_worker.a:Thing'"},
        }
        for name, sources in cases.items():
            with self.subTest(name):
                self.assertIsNotNone(find_cycle(import_graph(sources)))
        self.assertIsNone(find_cycle(import_graph({"a": "from .b import x", "b": "import os"})))

    def test_no_module_uses_another_modules_private_names(self):
        self.assertEqual(private_uses(package_sources()), [])
        self.assertEqual(
            private_uses({"a": "from .b import _new_task\nfrom . import b\nb._helper()",
                          "b": ""}),
            [("a", "imports _new_task"), ("a", "uses b._helper")])

    def test_nothing_patches_sys_modules(self):
        for name, text in package_sources().items():
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Attribute) and node.attr == "modules" \
                        and isinstance(node.value, ast.Name) and node.value.id == "sys":
                    self.fail("%s.py touches sys.modules (line %d)" % (name, node.lineno))


if __name__ == "__main__":
    unittest.main()
