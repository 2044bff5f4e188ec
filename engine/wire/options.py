"""A1111's option names (v1.10 `modules/shared_options.py`, AGPL-3.0, plus its built-in Lora extension's) and the
JSON type of each, so `POST /options` can refuse a key A1111 does not have and a value of the wrong type.

Only names and types are listed (what a client may send); the options this worker reads have their own
validators (engine.options, engine.translate.common).
"""

import math
from typing import Any

from engine.errors import RequestError


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


BOOLEAN = _names("""
    samples_save save_images_add_number grid_save grid_extended_filename grid_only_if_multiple
    grid_prevent_empty_spots enable_pnginfo save_txt save_images_before_face_restoration
    save_images_before_highres_fix save_images_before_color_correction save_mask save_mask_composite
    webp_lossless export_for_4chan use_original_name_batch use_upscaler_name_as_suffix save_selected_only
    save_init_img clean_temp_dir_at_start save_incomplete_images save_to_dirs grid_save_to_dirs
    use_save_to_dirs_for_ui face_restoration face_restoration_unload show_warnings
    show_gradio_deprecation_warnings samples_log_stdout multiple_tqdm print_hypernet_extra list_hidden_files
    disable_mmap_load_safetensors hide_ldm_prints api_enable_requests api_forbid_local_requests
    unload_models_when_training pin_memory save_optimizer_state save_training_settings_to_txt
    training_xattention_optimizations training_enable_tensorboard training_tensorboard_save_images
    sd_checkpoints_keep_in_cpu enable_quantization enable_emphasis enable_batch_seeds upcast_attn tiling
    sdxl_clip_l_skip refiner_switch_by_sample_steps s_min_uncond_all enable_prompt_comments auto_backcompat
    use_downcasted_alpha_bar sd_vae_overrides_per_model_preferences auto_vae_precision img2img_color_correction
    img2img_fix_steps return_mask return_mask_composite pad_cond_uncond persistent_cond_cache batch_cond_uncond
    use_old_emphasis_implementation use_old_karras_scheduler_sigmas no_dpmpp_sde_batch_determinism
    use_old_hires_fix_width_height dont_fix_second_order_samplers_schedule hires_fix_use_firstpass_conds
    use_old_scheduling interrogate_keep_models_in_memory interrogate_return_ranks deepbooru_sort_alpha
    deepbooru_use_spaces deepbooru_escape extra_networks_show_hidden_directories
    extra_networks_dir_button_function extra_networks_card_show_desc textual_inversion_print_at_load
    textual_inversion_add_hashes_to_infotext keyedit_move disable_token_counters return_grid do_not_show_images
    js_modal_lightbox js_modal_lightbox_initially_zoomed js_modal_lightbox_gamepad compact_prompt_box
    samplers_in_dropdown dimensions_and_batch_together sd_checkpoint_dropdown_use_short hires_fix_show_sampler
    hires_fix_show_prompts txt2img_settings_accordion img2img_settings_accordion gradio_themes_cache
    show_progress_in_title send_seed send_size add_model_name_to_info add_model_hash_to_info
    add_vae_name_to_info add_vae_hash_to_info add_user_name_to_info add_version_to_infotext
    disable_weights_auto_swap show_progressbar live_previews_enable show_progress_grid
    live_preview_allow_lowvram_full live_preview_fast_interrupt js_live_preview_in_modal_lightbox
    always_discard_next_to_last_sigma sgm_noise_multiplier uni_pc_lower_order_final enable_reloading_ui_scripts
    lora_functional lora_add_hashes_to_infotext lora_show_all lora_not_found_warning_console
    lora_not_found_gradio_warning lora_bundled_ti_to_infotext
""")
INTEGER = _names("""
    jpeg_quality n_rows target_side_length img_max_size_mp directories_max_prompt_words ESRGAN_tile
    ESRGAN_tile_overlap memmon_poll_rate training_image_repeats_per_epoch training_write_csv_every
    training_tensorboard_flush_every sd_checkpoints_limit sd_checkpoint_cache comma_padding_backtrack
    CLIP_stop_at_last_layers sdxl_crop_top sdxl_crop_left sd_vae_checkpoint_cache img2img_editor_height
    img2img_batch_show_results_limit interrogate_clip_num_beams interrogate_clip_min_length
    interrogate_clip_max_length interrogate_clip_dict_limit extra_networks_card_width extra_networks_card_height
    js_modal_lightbox_gamepad_repeat show_progress_every_n_steps live_preview_refresh_period eta_noise_seed_delta
    uni_pc_order upscaling_max_images_in_cache lora_in_memory_limit
""")
NUMBER = _names("""
    img_downscale_threshold code_former_weight sdxl_refiner_low_aesthetic_score sdxl_refiner_high_aesthetic_score
    inpainting_mask_weight initial_noise_multiplier img2img_extra_noise s_min_uncond token_merging_ratio
    token_merging_ratio_img2img token_merging_ratio_hr interrogate_deepbooru_score_threshold
    extra_networks_default_multiplier extra_networks_card_text_scale keyedit_precision_attention
    keyedit_precision_extra eta_ddim eta_ancestral s_churn s_tmin s_tmax s_noise sigma_min sigma_max rho
    skip_early_cond beta_dist_alpha beta_dist_beta
""")
STRING = _names("""
    samples_format samples_filename_pattern grid_format grid_zip_filename_pattern font grid_text_active_color
    grid_text_inactive_color grid_background_color temp_dir outdir_samples outdir_txt2img_samples
    outdir_img2img_samples outdir_extras_samples outdir_grids outdir_txt2img_grids outdir_img2img_grids
    outdir_save outdir_init_images directories_filename_pattern upscaler_for_img2img face_restoration_model
    auto_launch_browser api_useragent dataset_filename_word_regex dataset_filename_join_string
    sd_model_checkpoint sd_unet randn_source emphasis sd_noise_schedule hires_fix_refiner_pass sd_vae
    sd_vae_encode_method sd_vae_decode_method img2img_background_color img2img_sketch_default_brush_color
    img2img_inpaint_mask_brush_color img2img_inpaint_sketch_default_brush_color cross_attention_optimization
    deepbooru_filter_tags extra_networks_hidden_models extra_networks_card_order_field extra_networks_card_order
    extra_networks_add_text_separator ui_extra_networks_tab_reorder sd_hypernetwork keyedit_delimiters
    gallery_height localization gradio_theme infotext_styles live_previews_image_format show_progress_type
    live_preview_content ddim_discretize k_sched_type uni_pc_variant uni_pc_skip_type
    postprocessing_existing_caption_action disable_all_extensions restore_config_state_file sd_checkpoint_hash
    sd_lora lora_preferred_name
""")
STRING_LIST = _names("""
    realesrgan_enabled_models interrogate_clip_skip_categories keyedit_delimiters_whitespace quicksettings_list
    ui_tab_order hidden_tabs ui_reorder_list infotext_skip_pasting hide_samplers postprocessing_enable_in_main_ui
    postprocessing_operation_order disabled_extensions lora_hide_unknown_for_versions
""")
OPTION_NAMES = BOOLEAN | INTEGER | NUMBER | STRING | STRING_LIST

# Bounds on what a client can store in options this worker keeps but never reads: enough for any real
# value, small enough that options cannot be used to fill the worker's memory.
MAX_STRING = 1024
MAX_LIST_ITEMS = 256
MAX_MAGNITUDE = 1e9


def check_option(field: str, key: str, value: Any) -> Any:
    """`value` if it has the JSON type of A1111's option `key` and fits the bounds, else a RequestError.

    Raises:
        RequestError: naming `field`: `key` is no A1111 option, or the value's type or size is wrong.
    """
    if key not in OPTION_NAMES:
        raise RequestError(field, "is not an A1111 option (see GET /sdapi/v1/options for the known ones)")
    if key in BOOLEAN:
        if not isinstance(value, bool):
            raise RequestError(field, f"must be true or false, got {value!r}")
    elif key in INTEGER or key in NUMBER:
        integral = key in INTEGER
        numeric = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not numeric or abs(value) > MAX_MAGNITUDE or (integral and value != int(value)):
            kind = "an integer" if integral else "a number"
            raise RequestError(field, f"must be {kind} of at most {MAX_MAGNITUDE:g} in size, got {value!r}")
    elif key in STRING:
        if value is not None and (not isinstance(value, str) or len(value) > MAX_STRING):
            raise RequestError(field, f"must be a string of at most {MAX_STRING} characters or null")
    elif (
        not isinstance(value, list)
        or len(value) > MAX_LIST_ITEMS
        or not all(isinstance(item, str) and len(item) <= MAX_STRING for item in value)
    ):
        raise RequestError(field, f"must be a list of at most {MAX_LIST_ITEMS} strings")
    return value
