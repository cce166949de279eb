"""The one Registry of methods, models and datasets: entries found by importing the registry's package on first use,
descriptions, the nearest-name hint, a duplicate refused, unregister, and one error type (ConfigError naming the config
key) for every unknown name."""
from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from typing import Literal

import pytest

from peerkd.config import ConfigError, build_config
from peerkd.core import registry
from peerkd.core.method import Method
from peerkd.core.registry import DATASETS, METHODS, MODELS, Registry
from peerkd.models import build_model

LISTING = "see `peerkd list widgets`"


@pytest.fixture
def widgets(tmp_path, monkeypatch):
    """A registry of its own over a package ``widgets_pkg`` of two modules, each registering one entry on import
    (as peerkd/methods/*.py register into METHODS)."""
    (tmp_path / "widgets_registry.py").write_text(textwrap.dedent(f"""
        from peerkd.core.registry import Registry

        WIDGETS = Registry("widget", "widgets_pkg", "data.widget", {LISTING!r})
    """))
    package = tmp_path / "widgets_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "square.py").write_text(textwrap.dedent('''
        from widgets_registry import WIDGETS


        @WIDGETS.register("square")
        def square(x):
            """The square of x.

            More text, not part of the description."""
            return x * x
    '''))
    (package / "cube.py").write_text(textwrap.dedent('''
        from widgets_registry import WIDGETS


        @WIDGETS.register("cube", description="x three times over")
        def cube(x):
            """The cube of x."""
            return x ** 3
    '''))
    (package / "_private.py").write_text("raise RuntimeError('a module whose name starts with _ is not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import widgets_registry

    yield widgets_registry.WIDGETS
    for name in ("widgets_registry", "widgets_pkg", "widgets_pkg.square", "widgets_pkg.cube"):
        sys.modules.pop(name, None)


def test_entries_register_when_their_package_is_first_looked_into(widgets):
    assert "widgets_pkg.square" not in sys.modules  # nothing imported before the first lookup
    assert widgets.get("square")(3) == 9 and widgets.get("cube")(2) == 8
    assert widgets.names() == ["cube", "square"]
    assert widgets.descriptions() == {"cube": "x three times over", "square": "The square of x."}
    assert [name for name, _ in widgets.items()] == ["cube", "square"]


def test_contains_does_not_raise_for_an_unknown_name(widgets):
    assert "square" in widgets
    assert "circle" not in widgets and None not in widgets


def test_an_unknown_name_is_a_config_error_naming_the_key_and_the_nearest_name(widgets):
    with pytest.raises(ConfigError) as err:
        widgets.get("sqare")
    assert str(err.value) == f"data.widget: unknown widget 'sqare'; did you mean 'square'? {LISTING}"
    with pytest.raises(ConfigError) as err:
        widgets.get("hexagon", key="data.shapes[2]")  # the caller's key, no near name
    assert str(err.value) == f"data.shapes[2]: unknown widget 'hexagon'; {LISTING}"


def test_a_second_entry_of_one_name_is_refused_and_the_first_kept(widgets):
    square = widgets.get("square")
    widgets.add("square", square)  # the same object again (a module imported twice): accepted
    with pytest.raises(ConfigError, match=r"widget 'square' is registered twice \(widgets_pkg\.square\.square and "
                                          r".*\.impostor\); rename one of them"):
        @widgets.register("square")
        def impostor(x):
            return x
    assert widgets.get("square") is square
    for bad in ("", None, 3):
        with pytest.raises(ConfigError, match="registered under a non-empty string"):
            widgets.add(bad, square)


def test_unregister_removes_the_entry_and_its_description(widgets):
    widgets.unregister("cube")
    assert "cube" not in widgets and widgets.names() == ["square"] and "cube" not in widgets.descriptions()
    with pytest.raises(ConfigError, match="unknown widget 'cube'"):
        widgets.get("cube")
    widgets.unregister("cube")  # absent: nothing to do


def test_methods_models_and_datasets_are_one_registry_class():
    assert type(METHODS) is type(MODELS) is type(DATASETS) is Registry
    assert (METHODS.key, MODELS.key, DATASETS.key) == ("method.name", "method.model", "data.dataset")
    # the module's aliases are the registries' own methods, not copies
    assert registry.register_method.__self__ is METHODS and registry.register_model.__self__ is MODELS
    assert registry.register_dataset.__self__ is DATASETS
    assert {"dml", "kdcl", "vanilla"} <= set(METHODS.names()) and "resnet32" in MODELS and "synthetic" in DATASETS


def test_an_unknown_method_model_or_dataset_is_one_error_type_naming_its_key():
    with pytest.raises(ConfigError, match=r"^method\.name: unknown method 'dmll'; did you mean 'dml'\? see"):
        build_config({"method": {"name": "dmll"}})
    with pytest.raises(ConfigError, match=r"^method\.model: unknown model 'resnet33'; did you mean 'resnet34'\?"):
        build_model("resnet33", 10)
    with pytest.raises(ConfigError, match=r"^method\.models\[1\]: unknown model 'resnet33'"):
        build_model("resnet33", 10, key="method.models[1]")
    with pytest.raises(ConfigError, match=r"^data\.dataset: unknown dataset 'cifar1000'; did you mean 'cifar100'\?"):
        DATASETS.get("cifar1000")
    with pytest.raises(ConfigError, match=r"^data\.dataset: unknown dataset 'cifar1000'"):
        build_config({"data": {"dataset": "cifar1000"}})


def test_a_method_registered_at_run_time_is_validated_and_gone_once_unregistered():
    class Temporary(Method):
        """A method registered by this test only."""

        @dataclass
        class Options:
            width: Literal["narrow", "wide"] = "narrow"  # a choice of the method's own schema

    METHODS.add("temporary_test_method", Temporary)
    try:
        assert Temporary.method_name == "temporary_test_method"
        assert METHODS.descriptions()["temporary_test_method"] == "A method registered by this test only."
        options = build_config({"method": {"name": "temporary_test_method", "width": "wide"}}).method.options
        assert options == Temporary.Options(width="wide")
        with pytest.raises(ConfigError, match="method.width: 'wid' is not one of narrow, wide"):
            build_config({"method": {"name": "temporary_test_method", "width": "wid"}})
    finally:
        METHODS.unregister("temporary_test_method")
    assert "temporary_test_method" not in METHODS
    with pytest.raises(ConfigError, match="unknown method 'temporary_test_method'"):
        build_config({"method": {"name": "temporary_test_method"}})
