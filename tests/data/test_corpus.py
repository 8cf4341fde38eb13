"""The demo's corpus reader visits statements only: it finds the same definitions, in the same order, as
ast.walk (the standard library's full breadth-first walk), wherever they are nested."""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing

from pytrain.data.corpus import _statements

NESTED = textwrap.dedent('''
    """module"""
    import sys
    if sys.platform == "win32":
        def a(): "in if"
    else:
        class B:
            def b(self): "in a class in else"
    try:
        def c(): pass
    except ImportError:
        def d(): "in a handler"
    else:
        def e():
            def e2(): pass  # as deep as d: ast.walk gives d first (a Try's handlers come before its orelse)
    finally:
        async def f(): "in finally"
    for x in range(2):
        def g(): pass
    else:
        def h(): pass
    while False:
        with open(x) as y:
            def i(): pass
    match sys.argv:
        case [one]:
            def j(): pass
        case _ if (lambda: 0)():
            class K: pass
    def outer():
        def inner(): pass
        return [lambda: 0 for _ in ()]
''')


def names(nodes) -> list[str]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [getattr(node, "name", "<module>") for node in nodes if isinstance(node, kinds)]


def test_statements_find_what_ast_walk_finds_in_its_order():
    for source in (NESTED, inspect.getsource(ast), inspect.getsource(typing)):
        tree = ast.parse(source)
        assert names(_statements(tree)) == names(ast.walk(tree))
    assert len(names(ast.walk(ast.parse(NESTED)))) == 16
