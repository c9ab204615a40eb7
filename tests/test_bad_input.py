"""A battery of bad inputs: each gets one line naming the field, the value and what is allowed;
exit code 2 on the CLI, no traceback."""

import pytest

from wse_sim.cli.main import main

MESH8 = "wse_sim/presets/mesh8.toml"  # inherits: base = "wse2"
WSE2 = "wse_sim/presets/wse2.toml"
TINY = "workloads/zoo/tiny.toml"


def _edit(tmp_path, src: str, old: str, new: str) -> str:
    text = open(src).read()
    assert old in text, old
    f = tmp_path / ("edited_" + src.rsplit("/", 1)[-1])
    f.write_text(text.replace(old, new))
    return str(f)


RUN = ["run", "--preset", "mesh16", "--model", "tiny"]

CLI_CASES = [
    # (argv, text that must appear in the one-line error)
    (["run", "--model", "no-such-model"], "no-such-model"),
    (["run", "--preset", "wse9", "--model", "tiny"], "wse9"),
    (["run", "--preset", "/no/such/file.toml", "--model", "tiny"], "does not exist"),
    (RUN + ["--prompt", "0"], "--prompt"),
    (RUN + ["--prompt", "-5"], "--prompt"),
    (RUN + ["--prompt", "abc"], "--prompt"),
    (RUN + ["--context", "0"], "--context"),
    (RUN + ["--batch", "0"], "--batch"),
    (RUN + ["--grid", "0"], "--grid"),
    (RUN + ["--grid", "17"], "grid"),
    (RUN + ["--sparsity", "1.5"], "--sparsity"),
    (RUN + ["--sparsity", "nan"], "--sparsity"),
    (RUN + ["--dtype", "fp8"], "--dtype"),
    (RUN + ["--phase", "serve"], "--phase"),
    (RUN + ["--engine", "warp"], "--engine"),
    (RUN + ["--strategy", "teleport"], "strategy"),
    (RUN + ["--set", "nonsense=1"], "nonsense"),
    (RUN + ["--set", "clock_ghz"], "--set"),
    (RUN + ["--set", "clock_ghz=fast"], "clock_ghz"),
    (RUN + ["--set", "clock_ghz=-1"], "clock_ghz"),
    (RUN + ["--set", "clock_ghz=inf"], "clock_ghz"),
    (RUN + ["--set", "mesh_cols=0"], "mesh_cols"),
    (RUN + ["--set", "mesh_rows=-3"], "mesh_rows"),
    (RUN + ["--set", "sram_bytes=0"], "sram_bytes"),
    (RUN + ["--set", "sram_bytes=1e99"], "sram_bytes"),
    (RUN + ["--set", "link_bits_per_cycle=33"], "link_bits_per_cycle"),
    (RUN + ["--set", "colors_per_core=0"], "colors_per_core"),
    (RUN + ["--set", "sram_bytes=1024"], "sram_bytes 1024"),
    (RUN + ["--set", "colors_per_core=2"], "colors_per_core 2"),
    (RUN + ["--phase", "decode", "--context", "500"], "context"),
    (RUN + ["--prompt", "5000"], "prompt"),
    (RUN + ["--wafers", "0"], "--wafers"),
    (RUN + ["--wafers", "9"], "wafers"),
    (RUN + ["--generate", "0"], "--generate"),
    (["run", "--preset", "mesh16", "--model", "llama3.1-405b"], "does not fit"),
    (["compare", "--preset", "mesh16"], "--model"),
    (["search", "--preset", "mesh16", "--model", "gpt2-xl"], "no strategy fits"),
    (["nosuchcommand"], "invalid choice"),
    (["run"], "--model"),
]


@pytest.mark.parametrize("argv, needle", CLI_CASES, ids=[" ".join(a[-2:]) for a, _ in CLI_CASES])
def test_cli_bad_input(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:"), err
    assert "\n" not in err and "Traceback" not in err
    assert needle in err, err


FILE_CASES = [
    # (which file, old text, new text, needle): a user's own preset or model file gone wrong
    (WSE2, "sram_bytes = 49152", 'sram_bytes = "big"', "sram_bytes"),
    (WSE2, "sram_bytes = 49152", "sram_bytes = -1", "sram_bytes"),
    (WSE2, "clock_ghz = 1.1", "clock_ghz = 0", "clock_ghz"),
    (WSE2, "clock_ghz = 1.1", "clock_ghz = 1.1\nturbo = true", "turbo"),
    (WSE2, "mesh_cols = 750", "", "mesh_cols"),
    (WSE2, "static_power_w_per_core = 0.00385", "static_power_w_per_core = -1",
     "static_power_w_per_core"),
    (WSE2, "static_power_w_per_router = 0.00176", "static_power_w_per_router = nan",
     "static_power_w_per_router"),
    (MESH8, "mesh_cols = 8", "mesh_cols = 8.5", "mesh_cols"),
    (MESH8, "[hardware]", "[hardware\n", "TOML"),
    (MESH8, "chip_cores = 0", "chip_cores = 0\nturbo = true", "turbo"),
    (MESH8, 'base = "wse2"', 'base = "wse2"\nsram_bytes = 0', "sram_bytes"),
    (MESH8, 'base = "wse2"', 'base = "wse2"\nwarp = 9', "warp"),
    (MESH8, 'base = "wse2"', 'base = "wse9"', "wse9"),
    (MESH8, 'base = "wse2"', 'base = "nope.toml"', "nope.toml"),
    (MESH8, 'base = "wse2"', "base = 2", "base"),
    (MESH8, 'base = "wse2"', 'base = "edited_mesh8.toml"', "cycle"),
    (MESH8, 'base = "wse2"', "", "missing hardware field"),
    (TINY, "n_layers = 2", "n_layers = 0", "n_layers"),
    (TINY, "n_layers = 2", 'n_layers = "two"', "n_layers"),
    (TINY, "n_heads = 4", "n_heads = 3", "n_heads"),
    (TINY, "n_layers = 2", "n_layers = 2\nwings = 2", "wings"),
]


@pytest.mark.parametrize("src, old, new, needle", FILE_CASES)
def test_bad_files(tmp_path, src, old, new, needle, capsys):
    f = _edit(tmp_path, src, old, new)
    if src in (MESH8, WSE2):
        argv = ["run", "--preset", f, "--model", "tiny"]
    else:
        argv = ["run", "--preset", "mesh16", "--model", f]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err


def test_python_api_errors_are_one_line_value_errors():
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program, run_model
    from wse_sim.hardware import load_preset
    from wse_sim.program import Compute, Program, Region
    hw = load_preset("mesh8")
    cases = [
        lambda: run_model("mesh8", "tiny", batch=-1),
        lambda: build_program(hw, "tiny", dtype="int8"),
        lambda: simulate(Program("p", (Compute("c", Region(0, 0, 1, 1), 1),)), hw, engine="x"),
        lambda: Region(0, 0, 0, 1),
        lambda: Compute("c", Region(0, 0, 1, 1), -5),
        lambda: Compute("c", Region(0, 0, 1, 1), 5, sparsity=1.0),
        lambda: hw.with_overrides({"clock_ghz": "nope"}),
    ]
    for case in cases:
        with pytest.raises(ValueError) as e:
            case()
        assert "\n" not in str(e.value)


# ---- issue 17, item 4: the rest of bad input, by category ----------------------------------
ZERO_AND_EXTREME = [
    (["--set", "fmac_lanes_fp16=0"], "dtype: got 'fp16', but mesh16 has no fp16 lanes"),
    (["--set", "clock_ghz=1e300"], "clock_ghz: got 1e+300, must be at most 1000"),
    (["--set", "io_bits_per_s=0", "--strategy", "weight-streaming"],
     "io_bits_per_s: got 0, but this run moves"),
]


@pytest.mark.parametrize("extra, needle", ZERO_AND_EXTREME, ids=[e[1] for e, _ in ZERO_AND_EXTREME])
def test_zero_and_extreme_hardware_values(extra, needle, capsys):
    assert main(["run", "--preset", "mesh16", "--model", "tiny", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {needle}") and err.count("\n") == 1, err


def test_a_zero_the_run_does_not_use_is_allowed(capsys):
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--set", "fmac_lanes_bf16=0",
                 "--set", "io_bits_per_s=0", "--json"]) == 0


@pytest.mark.parametrize("option", ["--preset", "--model"])
def test_file_system_errors_name_the_path(tmp_path, option, capsys):
    long_name = str(tmp_path / ("a" * 300 + ".toml"))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    for path, needle in ((long_name, "File name too long"), (str(binary), "not UTF-8"),
                         (str(tmp_path), "")):
        argv = ["run", "--preset", "mesh16", "--model", "tiny"]
        argv[argv.index(option) + 1] = path
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and path[:40] in err and needle in err, err


def test_python_api_types_are_named():
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    from wse_sim.program import Alloc, Compute, Program, ProgramError, Region, Unicast
    hw = load_preset("mesh8")
    one = Region(0, 0, 1, 1)
    for make, needle in (
            (lambda: Compute("c", (0, 0, 1, 1), 10), "region got (0, 0, 1, 1)"),
            (lambda: Compute("c", one, 10**30), "flops got"),
            (lambda: Compute("c", one, 10, sparsity="x"), "sparsity got 'x'"),
            (lambda: Alloc("a", None, 4), "region got None"),
            (lambda: Alloc("a", one, "4"), "bytes_per_core got '4'"),
            (lambda: Unicast("u", one, 4, to="x"), "to got 'x'"),
            (lambda: Unicast("u", one, 4, dx=1.5), "dx got 1.5"),
            (lambda: Unicast("u", one, 10**30, dx=1), "wavelets got")):
        with pytest.raises(ProgramError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            make()
    program = Program("p", (Compute("c", one, 10),))
    with pytest.raises(TypeError, match="simulate: program got str"):
        simulate("p", hw)
    with pytest.raises(TypeError, match="simulate: hw got str"):
        simulate(program, "mesh8")
    with pytest.raises(TypeError, match="build_program: hw got str"):
        build_program("mesh8", "tiny")
