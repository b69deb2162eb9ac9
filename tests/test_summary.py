"""jaxmnist.summary: parameter counts, the table, and its command line."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import summary

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_count_params_takes_arrays_and_shapes():
    assert summary.count_params({'a': np.zeros((2, 3)), 'b': {'c': jnp.ones(4)}}) == 10
    assert summary.count_params(jax.ShapeDtypeStruct((5, 5), jnp.float32)) == 25
    assert summary.count_params({}) == 0


def test_param_table_lists_every_parameter_and_both_totals():
    variables = {
        'params': {'fc': {'kernel': np.zeros((320, 10)), 'bias': np.zeros(10)}},
        'batch_stats': {'bn': {'mean': np.zeros(20), 'var': np.zeros(20)}},
    }
    lines = summary.param_table(variables).splitlines()
    assert lines[0].split() == ['fc/kernel', '(320,', '10)', '3,200']
    assert lines[1].split() == ['fc/bias', '(10,)', '10']
    assert lines[-2].split() == ['total', 'parameters', '3,210']
    assert lines[-1].split() == ['batch_stats', 'values', '40']


@pytest.mark.parametrize(
    'name, params, stats',
    [('cnn', '8,550', '60'), ('resnet', '598,442', '1,120'), ('resnet101', '44,549,160', '105,344')],
)
def test_main_prints_the_table(name, params, stats, capsys):
    assert summary.main(['--model', name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].split()[-1] == params
    assert lines[-1].split()[-1] == stats


def test_num_classes_option(capsys):
    assert summary.main(['--model', 'resnet18', '--num-classes', '10']) == 0
    assert capsys.readouterr().out.splitlines()[-2].split()[-1] == '11,181,642'


def run_module(*args):
    return subprocess.run(
        [sys.executable, '-m', 'jaxmnist.summary', *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_command_line():
    result = run_module('--model', 'cnn_deep')
    assert result.returncode == 0, result.stderr
    assert '232,554' in result.stdout


def test_unknown_model_is_a_one_line_error(capsys):  # in-process: test_command_line runs the real command
    assert summary.main(['--model', 'lenet']) == 2
    out, err = capsys.readouterr()
    assert out == '' and len(err.strip().splitlines()) == 1 and "unknown model 'lenet'" in err


@pytest.mark.parametrize('classes', ['0', '-3'])
def test_no_classes_is_a_one_line_error(classes, capsys):  # a ZeroDivisionError in the initialisers before
    assert summary.main(['--model', 'cnn', '--num-classes', classes]) == 2
    assert capsys.readouterr().err == f'error: --num-classes must be >= 1, got {classes}\n'
