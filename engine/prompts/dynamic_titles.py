"""The Dynamic Prompts script's names, importable without the `dynamicprompts` library (which loads only
when a request uses the script: it is not part of a plain request's cold start)."""

DYNAMIC_PROMPTS_VERSION = "2.17.1"
# A1111 matches `alwayson_scripts` keys to script titles ("Dynamic Prompts v2.17.1") case-insensitively;
# clients also send the title without its version.
DYNAMIC_PROMPTS_TITLE = f"Dynamic Prompts v{DYNAMIC_PROMPTS_VERSION}"
DYNAMIC_PROMPTS_KEYS = (DYNAMIC_PROMPTS_TITLE.lower(), "dynamic prompts")
