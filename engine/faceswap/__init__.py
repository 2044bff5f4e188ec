"""ReActor face swap (sd-webui-reactor's `alwayson_scripts.reactor`): insightface's swap model on each
finished image, then optional face restoration and upscaling."""
