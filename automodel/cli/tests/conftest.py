from automodel.recipes.llm.tests.conftest import tiny_model_dir  # noqa: F401  (shared session fixture)
