"""Property-based tests (hypothesis) of sweep-file and CLI-option validation (issue 9, item 7):
any document or option value either validates, or fails with ONE line that names the key and,
for a choice, the allowed values. Never a traceback, never another exception type."""

import math
import string

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmbench.cli import cli
from slmbench.config import LIMITS, RunSettings
from slmbench.errors import InvalidOption
from slmbench.models import PRESETS
from slmbench.runners import DEVICES
from slmbench.sweep.files import PRECISIONS, SweepFileError, known_runtimes, load_sweep, parse_sweep

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TINY = ["mu-tiny", "deconly-tiny"]


def unique_ints(lo, hi, max_size=3):
    return st.lists(st.integers(lo, hi), min_size=1, max_size=max_size, unique=True)


valid_docs = st.fixed_dictionaries(
    {
        "grid": st.fixed_dictionaries(
            {
                "models": st.lists(st.sampled_from(TINY), min_size=1, max_size=2, unique=True),
                "input_lens": unique_ints(1, 500),
                "output_lens": unique_ints(1, 500),
            },
            optional={
                "batch_sizes": unique_ints(1, 8, 2),
                "threads": st.integers(1, 64),
                "pair_models": st.booleans(),
                "devices": st.just(["cpu"]),
                "runtimes": st.just(["onnxruntime"]),
                "precisions": st.just(["fp32"]),
            },
        ),
    },
    optional={
        "name": st.text(string.ascii_letters + "-_", min_size=1, max_size=12),
        "repetitions": st.fixed_dictionaries(
            {},
            optional={
                "warmup": st.integers(0, 5),
                "min_reps": st.integers(1, 5),
                "min_time_s": st.floats(0, 100),
                "seed": st.integers(0, 10**6),
            },
        ),
        "limits": st.fixed_dictionaries(
            {}, optional={"timeout_s": st.floats(0.5, 10**5), "memory_limit_gb": st.floats(0.5, 1024)}
        ),
    },
)


@SETTINGS
@given(valid_docs)
def test_valid_documents_parse_and_expand_to_the_grid_product(doc):
    sweep = parse_sweep(doc, "s.toml")
    configs, _ = sweep.configurations()
    g = doc["grid"]
    units = 1 if len(g["models"]) == 2 and g.get("pair_models", True) else len(g["models"])
    assert len(configs) == units * len(g["input_lens"]) * len(g["output_lens"]) * len(
        g.get("batch_sizes", [1])
    )
    assert {c.settings.input_len for c in configs} == set(g["input_lens"])


def _bad_text():
    return st.text(string.ascii_lowercase + "-_", min_size=1, max_size=10)


# (mutation, the key the error must name, a phrase the error must hold)
MUTATIONS = st.one_of(
    _bad_text()
    .filter(lambda k: k not in ("name", "description", "grid", "repetitions", "limits", "options"))
    .map(lambda k: ((None, k, 1), repr(k), "allowed keys")),
    _bad_text()
    .filter(
        lambda k: (
            k
            not in (
                "models",
                "devices",
                "runtimes",
                "precisions",
                "input_lens",
                "output_lens",
                "batch_sizes",
                "threads",
                "pair_models",
            )
        )
    )
    .map(lambda k: (("grid", k, [1]), repr("grid." + k), "allowed keys")),
    _bad_text()
    .filter(lambda k: k not in ("warmup", "min_reps", "min_time_s", "max_reps", "seed"))
    .map(lambda k: (("repetitions", k, 1), repr("repetitions." + k), "allowed keys")),
    st.sampled_from(["input_lens", "output_lens", "batch_sizes"]).flatmap(
        lambda k: st.one_of(
            st.integers(max_value=0).map(lambda v: (("grid", k, [v]), f"grid.{k}[0]", "allowed: 1 to")),
            st.integers(min_value=LIMITS["input_len"] + 1).map(
                lambda v: (("grid", k, [v]), f"grid.{k}[0]", "allowed: 1 to")
            ),
            st.one_of(st.text(max_size=3), st.floats(), st.booleans()).map(
                lambda v: (("grid", k, [v]), f"grid.{k}[0]", "must be an integer")
            ),
            st.one_of(st.integers(), st.text(max_size=3), st.none(), st.just([])).map(
                lambda v: (("grid", k, v), f"grid.{k}", "must be a non-empty list")
            ),
            st.just((("grid", k, [8, 8]), f"grid.{k}", "twice")),
        )
    ),
    st.tuples(
        st.sampled_from(
            [
                ("devices", DEVICES),
                ("runtimes", known_runtimes()),
                ("precisions", PRECISIONS),
                ("models", tuple(PRESETS)),
            ]
        ),
        _bad_text(),
    )
    .filter(lambda t: t[1] not in t[0][1] and not t[1].startswith("hf:"))
    .map(lambda t: (("grid", t[0][0], [t[1]]), f"grid.{t[0][0]}[0]", "allowed: " + ", ".join(t[0][1][:2]))),
    st.one_of(
        st.integers(max_value=0), st.integers(min_value=4097), st.floats(), st.text(max_size=3), st.booleans()
    ).map(lambda v: (("grid", "threads", v), "grid.threads", "must be an integer")),
    st.one_of(st.integers(), st.text(max_size=3)).map(
        lambda v: (("grid", "pair_models", v), "grid.pair_models", "true or false")
    ),
    st.sampled_from(["min_reps", "max_reps"]).flatmap(
        lambda k: st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=3), st.booleans()).map(
            lambda v: (("repetitions", k, v), f"repetitions.{k}", "must be an integer")
        )
    ),
    st.one_of(
        st.floats(max_value=-1e-9),
        st.just(math.nan),
        st.just(math.inf),
        st.floats(min_value=86401),
        st.text(max_size=3),
        st.booleans(),
    ).map(lambda v: (("repetitions", "min_time_s", v), "repetitions.min_time_s", "number of seconds")),
    st.one_of(
        st.floats(max_value=0),
        st.just(math.nan),
        st.just(math.inf),
        st.floats(min_value=7 * 86400 + 1),
        st.text(max_size=3),
        st.booleans(),
    ).map(lambda v: (("limits", "timeout_s", v), "limits.timeout_s", "number of seconds")),
    st.one_of(st.floats(max_value=0.09), st.just(math.nan), st.text(max_size=3)).map(
        lambda v: (("limits", "memory_limit_gb", v), "limits.memory_limit_gb", "number of GiB")
    ),
    st.one_of(
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
        st.just(math.nan),
    ).map(
        lambda v: (("options", "openvino", {"mode": v}), "options.openvino.mode", "string, number or boolean")
    ),
    st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)).map(
        lambda v: (("options", "openvino", v), "options.openvino", "must be a table")
    ),
    _bad_text()
    .filter(lambda k: k not in known_runtimes())
    .map(lambda k: (("options", k, {"mode": "x"}), f"options.{k}", "allowed tables: options.onnxruntime")),
)


@SETTINGS
@given(valid_docs, MUTATIONS)
def test_every_bad_key_or_value_is_one_line_naming_the_key_and_what_is_allowed(doc, mutation):
    (section, key, value), names, phrase = mutation
    if section is None:
        doc[key] = value
    else:
        doc.setdefault(section, {})[key] = value
    with pytest.raises(SweepFileError) as err:
        parse_sweep(doc, "bad.toml").configurations()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("bad.toml: ")
    assert names in message and phrase in message, message


def test_max_reps_below_min_reps_names_both():
    with pytest.raises(SweepFileError, match=r"repetitions: max_reps \(2\) must be >= min_reps \(5\)"):
        parse_sweep(
            {
                "grid": {"models": TINY, "input_lens": [8], "output_lens": [4]},
                "repetitions": {"min_reps": 5, "max_reps": 2},
            },
            "bad.toml",
        )


def test_a_length_no_model_can_hold_is_an_error_naming_it():
    with pytest.raises(SweepFileError, match=r"grid.input_lens: 5000 fits none of the models"):
        parse_sweep(
            {"grid": {"models": TINY, "input_lens": [8, 5000], "output_lens": [4]}}, "x"
        ).configurations()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["name", "grid", "repetitions", "limits", "options", "junk"]), json_values, max_size=5
    )
)
def test_arbitrary_documents_validate_or_fail_with_a_sweep_file_error(doc):
    try:
        parse_sweep(doc, "any.toml").configurations()
    except SweepFileError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("any.toml: ")


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text_files_validate_or_fail_with_a_sweep_file_error(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_sweep(path).configurations()
    except SweepFileError as exc:
        assert "\n" not in str(exc).strip() or "not valid TOML" in str(exc)
        assert str(exc).startswith(str(path))


def test_malformed_toml_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[grid\nmodels = [")
    with pytest.raises(SweepFileError, match=r"broken.toml: not valid TOML"):
        load_sweep(path)
    with pytest.raises(
        SweepFileError, match=r"no sweep file 'nope'; give a path or a shipped sweep: .*paper-cpu"
    ):
        load_sweep("nope")


# ---------------------------------------------------------------- run options (RunSettings) and the CLI

FIELDS = ("batch", "input_len", "output_len", "min_reps", "max_reps")


@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            **{
                f: st.one_of(st.integers(-5, 10), st.integers(10**6, 10**9), st.booleans(), st.floats(-2, 2))
                for f in FIELDS
            },
            "warmup": st.one_of(st.integers(-3, 3), st.floats(-1, 1)),
            "min_time_s": st.one_of(st.floats(-10, 100), st.integers(-3, 3), st.text(max_size=2)),
        },
    )
)
def test_run_settings_accept_exactly_the_valid_values_and_name_the_bad_one(kwargs):
    def valid(name, v):
        if name in FIELDS:
            return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= LIMITS.get(name, 1 << 30)
        if name == "warmup":
            return isinstance(v, int) and v >= 0
        return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0

    merged = {**{f.name: f.default for f in RunSettings.__dataclass_fields__.values()}, **kwargs}
    bad = [name for name, v in kwargs.items() if not valid(name, v)]
    consistent = merged["max_reps"] >= merged["min_reps"] if not bad else True
    if not bad and consistent:
        RunSettings(**kwargs)
        return
    with pytest.raises(InvalidOption) as err:
        RunSettings(**kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert any(name in message for name in (bad or ["max_reps"])), message


@pytest.mark.parametrize("value", [math.nan, math.inf, True])
def test_run_settings_reject_non_finite_min_time(value):
    with pytest.raises(InvalidOption, match="min_time_s"):
        RunSettings(min_time_s=value)


RUN_OPTIONS = {
    "--input-len": "input_len",
    "--output-len": "output_len",
    "--batch": "batch",
    "--min-reps": "min_reps",
    "--max-reps": "max_reps",
    "--threads": "threads must be",
}


@SETTINGS
@given(st.sampled_from(sorted(RUN_OPTIONS)), st.integers(max_value=0))
def test_cli_run_rejects_non_positive_counts_in_one_line(option, value):
    result = CliRunner().invoke(cli, ["run", "-m", "mu-tiny", option, str(value)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and RUN_OPTIONS[option] in lines[0] and "Traceback" not in result.output


@SETTINGS
@given(
    st.sampled_from(["--timeout", "--memory-limit"]),
    st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf), st.floats(min_value=1e7)),
)
def test_cli_sweep_rejects_bad_limits_in_one_line_before_running(option, value):
    result = CliRunner().invoke(cli, ["sweep", "quick", option, repr(value)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and option in lines[0], result.output


@SETTINGS
@given(st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12))
def test_cli_sweep_with_an_unknown_name_lists_the_shipped_ones(name):
    if name in ("quick", "paper-cpu", "paper-gpu", "paper-npu", "input-scaling", "budget-scaling"):
        return
    result = CliRunner().invoke(cli, ["sweep", f"nope-{name}"])
    assert result.exit_code == 2 and "quick" in result.output and result.output.count("\n") == 1
