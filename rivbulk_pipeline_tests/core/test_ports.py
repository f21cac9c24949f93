"""The ports are honest: each resource base class declares what its protocol in `core/ports.py`
declares, no more and no less, with the same parameters; and the Dagster wiring calls nothing on a
resource that the port does not declare."""

import ast
import inspect
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

import rivbulk_pipeline
from rivbulk_pipeline.core import ports
from rivbulk_pipeline.resources.gateway import GatewayResource
from rivbulk_pipeline.resources.history import ImportHistoryResource
from rivbulk_pipeline.resources.object_store import ObjectStoreResource
from rivbulk_pipeline.resources.registration import RegistrationProviderResource

PACKAGE = Path(rivbulk_pipeline.__file__).parent
PAIRS = [
    (ObjectStoreResource, ports.ObjectStore),
    (ImportHistoryResource, ports.ImportHistory),
    (GatewayResource, ports.Gateway),
    (RegistrationProviderResource, ports.RegistrationProvider),
]
# The resource parameters of the wiring, by name, and the port each is bound to.
PORT_OF_PARAMETER = {
    "store": ports.ObjectStore,
    "history": ports.ImportHistory,
    "gateway": ports.Gateway,
    "registration": ports.RegistrationProvider,
}


def _public(namespace: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in namespace.items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


def _resource_methods(cls: type) -> dict[str, Any]:
    """The methods the class and its bases declare, short of what Dagster's resources have."""
    methods: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        if base is object or issubclass(dg.ConfigurableResource, base):
            continue
        methods.update(_public(vars(base)))
    return methods


def _port_methods(protocol: type) -> dict[str, Any]:
    return _public(vars(protocol))


def _shape(member: Any) -> Any:
    """What callers rely on: a property, or each parameter's name, kind and whether it has a default."""
    if isinstance(member, property):
        return "property"
    return [
        (p.name, p.kind.name, p.default is not inspect.Parameter.empty)
        for p in inspect.signature(member).parameters.values()
    ]


@pytest.mark.parametrize("resource, port", PAIRS, ids=[port.__name__ for _, port in PAIRS])
def test_resource_base_class_matches_its_port(resource: type, port: type) -> None:
    declared, promised = _resource_methods(resource), _port_methods(port)
    assert promised, f"{port.__name__} declares no methods"
    assert sorted(declared) == sorted(promised), (
        f"{resource.__name__} and core.ports.{port.__name__} differ: only in the resource "
        f"{sorted(set(declared) - set(promised))}, only in the port {sorted(set(promised) - set(declared))}"
    )
    for name in promised:
        assert _shape(declared[name]) == _shape(promised[name]), f"{resource.__name__}.{name} != {port.__name__}.{name}"


def _wiring_uses() -> tuple[set[str], dict[str, set[tuple[str, str]]]]:
    """The resource parameters the wiring takes, and per parameter (attribute, module) for every
    attribute it takes from it, called or handed on (e.g. `history.changes_since` as a callback)."""
    taken: set[str] = set()
    used: dict[str, set[tuple[str, str]]] = {name: set() for name in PORT_OF_PARAMETER}
    modules = sorted((PACKAGE / "defs").glob("*.py")) + [PACKAGE / "ui_metadata.py"]
    for path in modules:
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            arguments = function.args
            names = {a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs}
            taken |= names & set(PORT_OF_PARAMETER)
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
                    if node.value.id in PORT_OF_PARAMETER:
                        used[node.value.id].add((node.attr, path.name))
    return taken, used


def test_the_wiring_calls_only_what_the_ports_declare() -> None:
    taken, used = _wiring_uses()
    # The gateway and the provider are only handed to the core's steps; the store and the history
    # are also called by the wiring itself.
    assert taken == set(PORT_OF_PARAMETER), f"the parse no longer sees the wiring's resource parameters: {taken}"
    assert used["store"] and used["history"], "the parse no longer sees the wiring's calls"
    for parameter, attributes in used.items():
        port = PORT_OF_PARAMETER[parameter]
        undeclared = sorted((attr, module) for attr, module in attributes if attr not in _port_methods(port))
        assert not undeclared, (
            f"the wiring uses {parameter}.<name> that core.ports.{port.__name__} does not declare: {undeclared}"
        )
