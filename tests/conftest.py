"""The long checks: end-to-end runs, subprocesses and large compilations, marked `slow`.

The default suite (`python -m pytest -q`) keeps the fast tests of every module
and one end-to-end run per kind of model; CI runs everything listed here too
(`python -m pytest -q -m slow`). Each entry is a test id or the prefix of a
parametrised family of them, with what it took on 2 CPU cores.
"""

import pytest

LONG = (
    'test_benchmark.py::test_benchmark_writes_every_field',  # 68 s
    'test_cli.py::test_sigterm_saves_and_exits_zero_then_resumes',  # 48 s
    'test_cli.py::test_sigterm_outside_the_training_loop',  # 40 + 15 s
    'test_cli.py::test_progress_line_shows_step_loss_speed_and_eta',  # 25 s (its training)
    'test_cli.py::test_generate_writes_grids',  # 28 s
    'test_evaluate.py::test_two_layer_workdir_trains_evaluates_and_generates',  # 55 s
    'test_sweep.py::test_failures_are_isolated_rerun_skips_done_and_aggregates',  # 35 s
    'test_seeds.py::test_a_replica_stays_bit_identical_when_another_skips_a_step',  # 27 s
    'test_seeds.py::test_interrupted_vmapped_run_resumes_bit_identically',  # 16 s
    'test_seeds.py::test_each_replica_has_a_complete_workdir',  # 13 s
    'test_models.py::test_two_stochastic_layers_wiring',  # 23 s
    'test_models.py::test_logistic_mixture_likelihood_builds',  # 33 + 26 s
    'test_models.py::test_output_shapes[image_shape0-bernoulli-conv]',  # 19 s
    'test_models.py::test_output_shapes[image_shape2-discretized_logistic-conv]',  # 14 s
    'test_distributions.py::test_logistic_mixture_likelihood_sums_pixels_and_broadcasts_over_samples[1]',  # 21 s
    'test_fault_tolerance.py::test_13_train_step_objectives_evaluation_and_sampling_reuse_no_key[elbo-1]',  # 18 s
    'test_fault_tolerance.py::test_04_read_only_disk_exits_nonzero_at_once_with_the_error',  # 18 s
    'test_fault_tolerance.py::test_08_extreme_logits_and_log_variances_keep_loss_and_gradients_finite[elbo-0.0-1-logistic_mixture]',  # 12 s
    # The top-down hierarchy's compile-heavy checks (nn.scan, remat, convolutions under
    # jax.grad); the default suite keeps its closed-form checks with the precision merge.
    'test_hierarchy.py::test_scanned_groups_equal_the_same_groups_unrolled',  # 75 + 37 s
    'test_hierarchy.py::test_spatial_groups_at_several_resolutions',  # 123 s
    'test_hierarchy.py::test_analytic_kl_is_the_mean_of_log_q_minus_log_p[residual]',  # 67 s
    'test_hierarchy.py::test_log_likelihood_matches_brute_force_integration[residual]',  # 47 s
    'test_hierarchy.py::test_identical_groups_compile_once',  # 41 s
    'test_hierarchy.py::test_reconstructions_from_the_top_m_groups',  # 23 s
    'test_hierarchy.py::test_cifar10_hierarchy_config_trains_through_mock_data',
    # Every family trains, resumes, evaluates and samples (the top-down ones of 2, 5
    # and 20 groups: 135, 196 and 109 s).
    'test_families.py::test_family_trains_resumes_evaluates_and_samples',
)


@pytest.hookimpl(tryfirst=True)  # Before -m "not slow" deselects.
def pytest_collection_modifyitems(items):
  for item in items:
    test_id = item.nodeid.split('tests/', 1)[-1]
    if any(test_id == entry or test_id.startswith(entry) for entry in LONG):
      item.add_marker(pytest.mark.slow)
