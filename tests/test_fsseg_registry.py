"""fsseg.registry: names, aliases, plugins named ``module:name``, one-line errors."""
import sys

import pytest

from fsseg.registry import Registry, RegistryError


def test_names_aliases_and_errors():
    reg = Registry("segmenter", flag="--model.init_args.segmenter.name")

    @reg.register("compact", aliases=("BA+SVP+PCS", "ba-svp-pcs", "BA_SVP_PCS"))  # the last two: one key
    def compact():
        return "compact"

    assert reg.get("ba+svp+pcs") is compact and reg.canonical("BA + SVP + PCS") == "compact"
    assert reg.names() == ["compact"] and "Compact" in reg and len(reg) == 1
    with pytest.raises(RegistryError, match=r"unknown segmenter 'fulll' \(--model.init_args.segmenter.name\); "
                                            r"registered: compact"):
        reg.get("fulll")
    with pytest.raises(RegistryError, match="already registered for 'compact'"):
        reg.register("other", aliases=("compact",))(lambda: None)
    assert "\n" not in str(RegistryError("one line"))


def test_plugin_module_registers_on_lookup(tmp_path, monkeypatch):
    reg = Registry("benchmark")
    sys.modules["fsseg_test_registry"] = type(sys)("fsseg_test_registry")
    sys.modules["fsseg_test_registry"].REG = reg
    (tmp_path / "toy_plugin_benchmark.py").write_text(
        "import fsseg_test_registry\n"
        "@fsseg_test_registry.REG.register('toy')\n"
        "class Toy:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "toy" not in reg
        assert reg.get("toy_plugin_benchmark:toy").__name__ == "Toy" and reg.names() == ["toy"]
        with pytest.raises(RegistryError, match="cannot import 'no_such_module_xyz'"):
            reg.get("no_such_module_xyz:toy")
    finally:
        sys.modules.pop("fsseg_test_registry")
        sys.modules.pop("toy_plugin_benchmark", None)
