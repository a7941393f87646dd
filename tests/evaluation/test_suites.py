"""Named task suites for `megadlm eval --tasks`: paper6 names lm-eval's own tasks."""
import pytest

from megadlm.evaluation.run import SUITES, _check_tasks, _task_manager, expand_tasks


def test_suites_expand_in_place_and_each_task_runs_once():
    paper6 = SUITES["paper6"]
    assert expand_tasks(["paper6"]) == paper6
    assert expand_tasks(["arc_challenge", "paper6", "piqa"]) == ["arc_challenge", *paper6]
    assert expand_tasks(["my_local_task"]) == ["my_local_task"]


@pytest.mark.slow  # lm-eval's task index takes seconds to build
def test_paper6_is_six_tasks_lm_eval_knows():
    """The paper's downstream set by lm-eval's names (SIQA is `social_iqa`, LAMBADA the OpenAI one);
    checked against lm-eval's task index, which needs no download."""
    assert SUITES["paper6"] == ["hellaswag", "piqa", "social_iqa", "winogrande", "lambada_openai", "arc_easy"]
    _check_tasks(_task_manager(None), SUITES["paper6"])  # raises EvalError naming any unknown one
