"""The long checks: end-to-end runs, subprocesses and large compilations, marked `slow`.

The default suite (`python -m pytest -q -n auto`) keeps the fast tests of every
module and one end-to-end run per kind of model; CI runs everything listed here
too (`python -m pytest -q -m slow`). Each entry is a test id or the prefix of a
parametrised family of them, with what it took on 2 CPU cores.
"""

import atexit
import os
import shutil
import tempfile

import pytest

# One persistent compilation cache for the whole session (subprocesses and xdist
# workers inherit it through the environment): the many tests that build the same
# small model and step load the compiled programs instead of compiling them again.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='vae_jax_tests_jit_cache_')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache_dir,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')

# vae_jax's user cache (decoded datasets) in a directory of the session's own, not ~/.cache.
if 'VAE_JAX_CACHE_DIR' not in os.environ:
  _user_cache = tempfile.mkdtemp(prefix='vae_jax_tests_cache_')
  atexit.register(shutil.rmtree, _user_cache, ignore_errors=True)
  os.environ['VAE_JAX_CACHE_DIR'] = _user_cache

LONG = (
    # The compiled initialisation against the op-by-op one: the costly families, and the
    # hierarchies, whose compiled values match only under XLA's default flags (which the
    # slow set keeps; the default run's optimisation level 0 rounds some differently).
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[top_down',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[class_prior]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[two_layers',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[iwae_vamp]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[gaussian_binary]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[local_bernoulli]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[mixture]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[conditional]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[conv]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[vq_vae]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[iaf]',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[logistic',
    'test_models.py::test_the_compiled_initialisation_equals_the_op_by_op_one[gaussian]',
    'test_stream.py::test_stream_resumes_from_its_saved_state[1]',  # 11 s (grain workers)
    'test_stream.py::test_a_worker_that_dies_ends_the_stream_with_its_exit_code',  # 7 s
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
    # Two of the three disentangling objectives' train-resume-score runs (beta_tcvae stays).
    'test_disentanglement.py::test_objective_trains_resumes_bit_exactly_and_scores[factor_vae]',  # 12 s
    'test_disentanglement.py::test_objective_trains_resumes_bit_exactly_and_scores[dip_vae_ii]',  # 9 s
    'test_hierarchy.py::test_log_likelihood_matches_brute_force_integration[precision-causal_bernoulli]',  # 11 s
    'test_distributions.py::test_causal_bernoulli_sample_frequencies_match_log_prob',  # 6 s
    'test_hierarchy.py::test_reconstructions_from_the_top_m_groups',  # 23 s
    'test_hierarchy.py::test_cifar10_hierarchy_config_trains_through_mock_data',
    # Every family trains, resumes, evaluates and samples; the dense top-down hierarchies
    # of 2, 5 and 20 groups do in the default run too (18, 24 and 16 s there).
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[vamp]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[mixture]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[iaf]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[conditional]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[class_prior]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[logistic_mixture]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[gaussian]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[local_bernoulli]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[gaussian_binary]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[two_layers_mixture]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[iwae_vamp]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[top_down_local]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[top_down_causal]',
    'test_families.py::test_family_trains_resumes_evaluates_and_samples[top_down_spatial]',
    'test_read_only_tools.py::test_generate_cli_bad_flag_is_one_line_and_writes_nothing',  # 2x5 s
    'test_config.py::test_cli_bad_config_file_or_flag_is_one_line[args4',  # 4 s
    # The shipped configs at full size, one step each (the default run keeps the small ones).
    'test_config.py::test_every_config_file_builds_and_takes_a_step[cifar10_hierarchy]',  # 48 s (381 s when the parameters initialised op by op)
    'test_config.py::test_every_config_file_builds_and_takes_a_step[ladder]',  # 51 s
    'test_config.py::test_every_config_file_builds_and_takes_a_step[vqvae]',  # 17 s
    'test_config.py::test_every_config_file_builds_and_takes_a_step[disentanglement]',  # 16 s
    'test_config.py::test_every_config_file_builds_and_takes_a_step[vampprior]',  # 14 s
    # Every other check that took 4 s or more in the default run (mostly compiling
    # a model of its own), moved here to keep that run within a few minutes.
    'test_checkpoint.py::test_round_trip_is_bit_identical[True]',  # 5 s
    'test_cli.py::test_workdir_that_is_a_file_is_a_clear_error',  # 5 s
    'test_config.py::test_cli_bad_config_file_or_flag_is_one_line[args0-error:',  # 5 s
    'test_config.py::test_cli_bad_config_file_or_flag_is_one_line[args1-error:',  # 4 s
    'test_config.py::test_cli_rejects_bad_value_before_creating_workdir[--config.data.name=nope-data.name]',  # 4 s
    'test_config.py::test_cli_rejects_bad_value_before_creating_workdir[--config.model.latent_dim=0-model.latent_dim]',  # 4 s
    'test_config.py::test_cli_rejects_bad_value_before_creating_workdir[--config.optimizer.learning_rate=-0.1-optimizer.learning_rate]',  # 4 s
    'test_config.py::test_cli_rejects_misspelt_field',  # 4 s
    'test_data.py::test_embedded_mnist_split_is_stratified_and_deterministic',  # 13 s
    'test_distributions.py::test_discretized_logistic_is_a_distribution_over_256_values',  # 5 s
    'test_distributions.py::test_log_likelihood_sums_over_image_axes',  # 6 s
    'test_distributions.py::test_mixture_finite_for_extreme_params[10000.0-1]',  # 6 s
    'test_distributions.py::test_mixture_finite_for_extreme_params[10000.0-3]',  # 6 s
    'test_distributions.py::test_rgb_mixture_sums_to_one_over_all_colours',  # 15 s
    'test_evaluate.py::test_chunking_changes_only_float_rounding[1-one_layer]',  # 5 s
    'test_evaluate.py::test_chunking_changes_only_float_rounding[1-two_layers]',  # 4 s
    'test_evaluate.py::test_chunking_changes_only_float_rounding[10-two_layers]',  # 4 s
    'test_evaluate.py::test_estimate_converges_from_below_as_k_grows[one_layer]',  # 9 s
    'test_evaluate.py::test_estimate_converges_from_below_as_k_grows[two_layers]',  # 11 s
    'test_evaluate.py::test_evaluate_elbo_averages_the_elbo_over_a_split[3]',  # 6 s
    'test_evaluate.py::test_evaluate_log_likelihood_over_a_split[1-one_layer]',  # 4 s
    'test_evaluate.py::test_evaluate_log_likelihood_over_a_split[1-two_layers]',  # 5 s
    'test_evaluate.py::test_exact_posterior_gives_the_exact_log_likelihood[10-3-two_layers]',  # 5 s
    'test_evaluate.py::test_exact_posterior_gives_the_exact_log_likelihood[1000-300-one_layer]',  # 6 s
    'test_evaluate.py::test_exact_posterior_gives_the_exact_log_likelihood[1000-300-two_layers]',  # 7 s
    'test_evaluate.py::test_exact_posterior_gives_the_exact_log_likelihood[200-64-one_layer]',  # 5 s
    'test_evaluate.py::test_exact_posterior_gives_the_exact_log_likelihood[200-64-two_layers]',  # 7 s
    'test_evaluate.py::test_iaf_posterior_log_likelihood_matches_the_closed_form',  # 16 s
    'test_evaluate.py::test_memory_is_bounded_whatever_k',  # 5 s
    'test_evaluate.py::test_mixture_prior_log_likelihood_matches_the_closed_form',  # 8 s
    'test_evaluate.py::test_two_layers_active_units_per_layer',  # 5 s
    'test_evaluate.py::test_vamp_prior_log_likelihood_matches_the_closed_form',  # 4 s
    'test_evaluate_workdir.py::test_other_split_and_image_limit',  # 5 s
    'test_evaluate_workdir.py::test_writes_json_with_every_number',  # 22 s
    'test_families.py::test_conditional_samples_one_row_per_class',  # 12 s
    'test_families.py::test_gaussian_on_binary_data_reports_discrete_units',  # 11 s
    'test_fault_tolerance.py::test_08_extreme_logits_and_log_variances_keep_loss_and_gradients_finite[elbo-0.0-1-bernoulli]',  # 8 s
    'test_fault_tolerance.py::test_08_extreme_logits_and_log_variances_keep_loss_and_gradients_finite[elbo-0.0-1-gaussian]',  # 4 s
    'test_fault_tolerance.py::test_08_extreme_logits_and_log_variances_keep_loss_and_gradients_finite[elbo-0.5-1-logistic_mixture]',  # 10 s
    'test_fault_tolerance.py::test_13_train_step_objectives_evaluation_and_sampling_reuse_no_key[iwae-3]',  # 12 s
    'test_flows.py::test_fresh_init_starts_near_the_contraction',  # 5 s
    'test_flows.py::test_jit_vmap_and_flattened_leading_dims_agree',  # 9 s
    'test_flows.py::test_log_q_matches_autodiff_log_determinant',  # 4 s
    'test_models.py::test_call_uses_the_explicit_noise',  # 10 s
    'test_models.py::test_iaf_posterior_builds_and_its_terms_have_the_documented_shapes',  # 5 s
    'test_models.py::test_mixture_and_vamp_priors_build_and_their_terms_have_the_documented_shapes[mixture]',  # 12 s
    'test_models.py::test_output_shapes[image_shape0-bernoulli-mlp]',  # 13 s
    'test_models.py::test_output_shapes[image_shape1-gaussian-conv]',  # 19 s
    'test_models.py::test_output_shapes[image_shape2-discretized_logistic-mlp]',  # 10 s
    'test_objectives.py::test_hierarchical_log_weights_are_log_px_with_the_exact_posterior',  # 6 s
    'test_objectives.py::test_iwae_bound_increases_with_k_towards_log_px[one_layer]',  # 9 s
    'test_objectives.py::test_iwae_bound_increases_with_k_towards_log_px[two_layers]',  # 16 s
    'test_objectives.py::test_likelihoods_read_the_decoder_output_as_parameter_planes[lead0-image_shape0-bernoulli]',  # 4 s
    'test_objectives.py::test_likelihoods_read_the_decoder_output_as_parameter_planes[lead0-image_shape0-discretized_logistic]',  # 6 s
    'test_objectives.py::test_likelihoods_read_the_decoder_output_as_parameter_planes[lead1-image_shape1-bernoulli]',  # 7 s
    'test_objectives.py::test_likelihoods_read_the_decoder_output_as_parameter_planes[lead1-image_shape1-discretized_logistic]',  # 9 s
    'test_objectives.py::test_one_layer_vae_keeps_the_analytic_kl',  # 7 s
    'test_objectives.py::test_two_layer_bound_equals_a_hand_computed_value',  # 7 s
    'test_objectives.py::test_two_layer_gradients_reach_every_network',  # 13 s
    'test_priors.py::test_vamp_prior_is_the_average_of_its_components_and_clips_pseudo_inputs',  # 4 s
    'test_sampling.py::test_interpolation_and_traversal_move_the_top_latent[False]',  # 7 s
    'test_sampling.py::test_interpolation_and_traversal_move_the_top_latent[True]',  # 4 s
    'test_sampling.py::test_two_layer_reconstructions_go_through_z1',  # 6 s
    'test_sampling.py::test_two_layer_top_down_decoding_follows_the_conditional_prior_means',  # 9 s
    'test_seeds.py::test_optimizer_counters_follow_the_step_even_over_skipped_steps[adagrad-burda]',  # 4 s
    'test_seeds.py::test_replica_is_bit_identical_to_the_single_run_with_its_seed',  # 13 s
    'test_train.py::test_nan_stops_naming_the_step_and_keeps_last_checkpoint[inf]',  # 4 s
    'test_train.py::test_skip_policy_stops_after_bounded_run[inf]',  # 4 s
    'test_train.py::test_skip_policy_stops_after_bounded_run[nan]',  # 4 s
    'test_train.py::test_tfds_dataset_through_mock_data',  # 7 s
    'test_trackers.py::test_wandb_and_mlflow_get_metrics_pictures_config_and_final_and_resume',  # 24 s
)


def pytest_configure(config):
  # The default run compiles hundreds of tiny programs and runs each for
  # milliseconds: XLA's backend optimisations cost more than they save there. The
  # slow checks (real data, long runs) keep them.
  if 'not slow' in (config.option.markexpr or '') and 'XLA_FLAGS' not in os.environ:
    os.environ['XLA_FLAGS'] = ('--xla_backend_optimization_level=0 '
                               '--xla_llvm_disable_expensive_passes=true')


@pytest.hookimpl(tryfirst=True)  # Before -m "not slow" deselects.
def pytest_collection_modifyitems(items):
  for item in items:
    test_id = item.nodeid.split('tests/', 1)[-1]
    if any(test_id == entry or test_id.startswith(entry) for entry in LONG):
      item.add_marker(pytest.mark.slow)
