"""Config validation, ELITE_* overrides, run-mode presets and the no-GPU stop."""
import ast
import dataclasses

import pytest
import torch

from notebook_library import NOTEBOOK, cell_sources, elite

FIELDS = {field.name: field for field in dataclasses.fields(elite.Config)}


def test_every_preset_is_valid_and_configs_are_frozen():
    for mode, preset in elite.MODE_PRESETS.items():
        config = elite.Config(run_mode=mode, **preset)
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.seed = 1


def test_every_problem_is_named_at_once():
    with pytest.raises(ValueError) as error:
        elite.Config(run_mode="fast", resolution=100, batch_size=0, blur_strength=(0.8, 0.2))
    message = str(error.value)
    for field in ("run_mode='fast'", "resolution=100", "batch_size=0", "blur_strength=(0.8, 0.2)"):
        assert field in message


def test_all_families_off_is_refused():
    off = {f"{family}_strength": (0.0, 0.0) for family in elite.DEGRADATION_FAMILIES}
    with pytest.raises(ValueError, match="switched off"):
        elite.Config(**off)


def test_overrides_parse_to_field_types():
    environ = {"ELITE_TRAIN_STEPS": "8", "ELITE_LEARNING_RATE": "3e-5", "ELITE_RESUME": "off",
               "ELITE_RUN_DIR": "/some/dir", "ELITE_BLUR_STRENGTH": "0.2,0.5", "PATH": "/bin"}
    assert elite.env_overrides(environ) == {"train_steps": 8, "learning_rate": 3e-5, "resume": False,
                                            "run_dir": "/some/dir", "blur_strength": (0.2, 0.5)}


@pytest.mark.parametrize("name, value", [("ELITE_TRAIN_STEPS", "many"), ("ELITE_RESUME", "maybe"),
                                         ("ELITE_BLUR_STRENGTH", "0.5")])
def test_bad_override_names_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        elite.env_overrides({name: value})


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="ELITE_TRAIN_STEP"):
        elite.env_overrides({"ELITE_TRAIN_STEP": "3"})


def test_precedence_form_then_preset_then_environment():
    form = {"run_mode": "full", "train_steps": 1500, "seed": 7}
    config, overrides = elite.build_config(form, {"ELITE_RUN_MODE": "smoke", "ELITE_BATCH_SIZE": "3"})
    assert config.run_mode == "smoke" and overrides == {"run_mode": "smoke", "batch_size": 3}
    assert config.train_steps == elite.MODE_PRESETS["smoke"]["train_steps"]  # preset beats form
    assert config.batch_size == 3 and config.seed == 7  # environment beats preset; form kept elsewhere


def test_full_run_without_gpu_stops_with_directions():
    with pytest.raises(RuntimeError, match="T4.*smoke"):
        elite.require_device_for(elite.Config(), torch.device("cpu"))
    elite.require_device_for(elite.Config(run_mode="smoke"), torch.device("cpu"))


def test_choose_dtype_on_cpu_is_fp32():
    assert elite.choose_dtype(torch.device("cpu")) is torch.float32


def test_wrong_types_are_named():
    with pytest.raises(ValueError, match=r"(?s)train_steps='100': expected a int.*resume=1: expected a bool"):
        elite.Config(train_steps="100", resume=1)
    assert elite.Config(grad_clip=1).grad_clip == 1  # an int is a fine float


@pytest.mark.parametrize("changes, message", [
    ({"learning_rate": float("inf")}, "learning_rate=inf: must be finite"),
    ({"learning_rate": float("nan")}, "learning_rate=nan: must be finite"),
    ({"learning_rate": 1e6}, "learning_rate=1000000.0: use a value in (0, 0.01]"),
    ({"learning_rate": 0.0}, "learning_rate=0.0: use a value in (0, 0.01]"),
    ({"lpips_weight": float("inf")}, "lpips_weight=inf: must be finite"),
    ({"blur_strength": (0.1, float("nan"))}, "blur_strength=(0.1, nan): must be finite"),
    ({"seed": -1}, "seed=-1: use a non-negative integer"),
    ({"num_examples": 0}, "num_examples=0: must be at least 1")])
def test_values_that_would_break_training_later_are_refused_now(changes, message):
    with pytest.raises(ValueError) as error:
        elite.Config(**changes)
    assert message in str(error.value)


def form_cell() -> ast.Module:
    return ast.parse(next(src for kind, src in cell_sources() if kind == "code" and "# @title Run parameters" in src))


def test_the_form_cell_assigns_exactly_the_form_fields_with_the_config_defaults():
    assignments = {node.targets[0].id: ast.literal_eval(node.value) for node in form_cell().body}
    assert tuple(assignments) == elite.FORM_FIELDS
    assert assignments == {name: FIELDS[name].default for name in elite.FORM_FIELDS}


def test_every_field_is_identity_optimisation_or_free_exactly_once():
    classes = elite.IDENTITY_FIELDS + elite.OPTIMISATION_FIELDS + elite.FREE_FIELDS
    assert sorted(classes) == sorted(FIELDS)


def assigned_names(tree: ast.AST) -> set[str]:
    """Names a cell binds at the top level (assignments, loops, with, imports, defs)."""
    names = set()
    for node in tree.body:
        for target in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                names.add(target.id)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def test_no_cell_but_the_form_binds_a_config_field_name():
    """The parameters cell reads the form from globals: a later cell that left e.g. `results_dir` behind would be
    read as a form value by the next Run all in the same kernel."""
    for kind, source in cell_sources():
        if kind == "code" and "# @title Run parameters" not in source:
            assert not assigned_names(ast.parse(source)) & set(FIELDS), source.splitlines()[0]


def test_papermill_parameters_land_where_the_parameters_cell_reads_them():
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    notebook = parameterize_notebook(load_notebook_node(str(NOTEBOOK)), {"run_mode": "smoke", "train_steps": 8})
    form = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    assert notebook.cells[form].source.startswith("# @title Run parameters")  # the tag sits on the form cell
    namespace = {}
    for cell in notebook.cells[form:form + 2]:  # the form, then papermill's injected values
        exec(cell.source, namespace)
    assert {name: namespace[name] for name in ("run_mode", "train_steps", "seed")} == {
        "run_mode": "smoke", "train_steps": 8, "seed": 0}
