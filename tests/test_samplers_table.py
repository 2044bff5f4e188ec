"""Sampler / schedule-type tables and name resolution (pure: no torch)."""

import subprocess
import sys

import pytest

from engine.errors import NotFoundError, UnsupportedError
from engine.samplers import SAMPLERS, SCHEDULES, resolve_sampler, sampler_list, scheduler_list


# A1111 v1.10.1's names, from its source (`sd_samplers_*` and `sd_schedulers.py`), in its listing order.
A1111_SAMPLERS = [
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 2S a",
    "DPM++ 3M SDE",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM fast",
    "DPM adaptive",
    "Restart",
    "DDIM",
    "DDIM CFG++",
    "PLMS",
    "UniPC",
    "LCM",
]
A1111_SCHEDULES = [
    ("automatic", "Automatic"),
    ("uniform", "Uniform"),
    ("karras", "Karras"),
    ("exponential", "Exponential"),
    ("polyexponential", "Polyexponential"),
    ("sgm_uniform", "SGM Uniform"),
    ("kl_optimal", "KL Optimal"),
    ("align_your_steps", "Align Your Steps"),
    ("simple", "Simple"),
    ("normal", "Normal"),
    ("ddim", "DDIM"),
    ("beta", "Beta"),
]
# A1111's default schedule per sampler (`options["scheduler"]`); None = the model's own (uniform) schedule.
A1111_DEFAULT_SCHEDULE = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 2M SDE Heun": "Exponential",
    "DPM++ 2S a": "Karras",
    "DPM++ 3M SDE": "Exponential",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "Restart": "Karras",
}
RUNNABLE = [row for row in SAMPLERS if not row.unsupported]


def test_tables_hold_exactly_a1111s_names_in_order():
    assert [row.name for row in SAMPLERS] == A1111_SAMPLERS
    assert [(row.name, row.label) for row in SCHEDULES] == A1111_SCHEDULES


@pytest.mark.parametrize("row", RUNNABLE, ids=lambda row: row.name)
def test_every_name_and_alias_resolves_case_insensitively(row):
    for spelling in (row.name, *row.aliases, row.name.upper(), f"  {row.name.lower()} "):
        assert resolve_sampler(spelling, None).sampler == row.name


@pytest.mark.parametrize("row", RUNNABLE, ids=lambda row: row.name)
def test_automatic_is_the_samplers_default_reported_by_label(row):
    expected = A1111_DEFAULT_SCHEDULE.get(row.name, "Automatic")
    for scheduler in (None, "", "Automatic", "automatic"):
        choice = resolve_sampler(row.name, scheduler)
        assert choice.schedule == expected
        assert choice.schedule_name == next(s.name for s in SCHEDULES if s.label == expected)


@pytest.mark.parametrize("schedule", SCHEDULES[1:], ids=lambda s: s.name)
@pytest.mark.parametrize("row", RUNNABLE, ids=lambda row: row.name)
def test_combined_name_equals_separate_fields(row, schedule):
    separate = resolve_sampler(row.name, schedule.label)
    assert (separate.sampler, separate.schedule, separate.schedule_name) == (
        row.name,
        schedule.label,
        schedule.name,
    )
    for spelling in (schedule.label, schedule.name, *schedule.aliases):
        combined = resolve_sampler(f"{row.name} {spelling}", None)
        assert combined == separate
        assert resolve_sampler(row.name, spelling) == separate
    for alias in row.aliases:
        assert resolve_sampler(f"{alias} {schedule.label}", None) == separate


def test_schedule_in_the_name_wins_over_the_scheduler_field_like_a1111():
    choice = resolve_sampler("DPM++ 2M Karras", "exponential")
    assert (choice.sampler, choice.schedule) == ("DPM++ 2M", "Karras")


def test_default_schedule_given_explicitly_is_still_reported_by_label():
    assert resolve_sampler("DPM++ SDE Karras", None).schedule == "Karras"
    assert resolve_sampler("DPM++ SDE", "karras").schedule == "Karras"
    assert resolve_sampler("Euler", "Uniform").schedule == "Uniform"


def test_missing_sampler_is_a1111s_first_sampler():
    assert resolve_sampler(None, None).sampler == "DPM++ 2M"


def test_flags_follow_a1111s_options():
    sde = resolve_sampler("DPM++ SDE", None)
    assert sde.second_order and sde.brownian_noise and not sde.uses_ensd
    assert resolve_sampler("Euler a", None).uses_ensd
    assert resolve_sampler("DPM2", None).discard_next_to_last_sigma
    assert resolve_sampler("DPM++ 3M SDE", None).discard_next_to_last_sigma
    assert resolve_sampler("DDIM", "Karras").ignores_schedule
    assert not resolve_sampler("Euler", None).ignores_schedule


@pytest.mark.parametrize("name", ["Euler b", "DPM++ 4M", "Karras", "DPM++ 2M Kerras", "euler_a"])
def test_unknown_sampler_lists_the_valid_names(name):
    with pytest.raises(NotFoundError) as caught:
        resolve_sampler(name, None, field="hr_sampler_name")
    message = str(caught.value)
    assert caught.value.field == "hr_sampler_name"
    assert repr(name) in message
    for valid in ("'DPM++ 2M'", "'Euler a'", "'k_euler_a'", "'UniPC'"):
        assert valid in message
    # Only samplers this worker runs are offered: one it would then refuse is not among them.
    assert "CFG++" not in message and "cfgpp" not in message


def test_unknown_schedule_lists_the_valid_names():
    with pytest.raises(NotFoundError) as caught:
        resolve_sampler("Euler", "Karas")
    assert caught.value.field == "scheduler"
    assert "'Karras'" in str(caught.value) and "'sgm_uniform'" in str(caught.value)


def test_ddim_cfgpp_is_recognised_but_refused_clearly():
    with pytest.raises(UnsupportedError) as caught:
        resolve_sampler("DDIM CFG++", None)
    assert "DDIM CFG++" in str(caught.value)


def test_samplers_endpoint_shape():
    listing = sampler_list()
    assert [item["name"] for item in listing] == [name for name in A1111_SAMPLERS if name != "DDIM CFG++"]
    assert all(set(item) == {"name", "aliases", "options"} for item in listing)
    by_name = {item["name"]: item for item in listing}
    # Values from A1111 v1.10.1 `samplers_k_diffusion`.
    assert by_name["DPM++ SDE"] == {
        "name": "DPM++ SDE",
        "aliases": ["k_dpmpp_sde"],
        "options": {"scheduler": "karras", "second_order": True, "brownian_noise": True},
    }
    assert by_name["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert by_name["DPM++ 2M SDE Heun"]["options"]["solver_type"] == "heun"
    assert by_name["DDIM"]["options"] == {}


def test_schedulers_endpoint_shape():
    listing = scheduler_list()
    assert [(item["name"], item["label"]) for item in listing] == A1111_SCHEDULES
    assert all(
        set(item) == {"name", "label", "aliases", "default_rho", "need_inner_model"} for item in listing
    )
    by_name = {item["name"]: item for item in listing}
    assert by_name["karras"]["default_rho"] == 7.0
    assert by_name["polyexponential"]["default_rho"] == 1.0
    assert by_name["sgm_uniform"]["aliases"] == ["SGMUniform"]
    assert by_name["automatic"]["aliases"] is None
    assert by_name["uniform"]["need_inner_model"] and not by_name["karras"]["need_inner_model"]


def test_table_module_imports_no_torch():
    code = "import sys, engine.samplers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
