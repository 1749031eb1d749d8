"""tests is a package, and so is each subfolder (they mirror packprep/, see conftest.py): test modules
get unique names (tests.stages.test_dedup), import shared code as tests.helpers, and a folder such as
tests/tokenizers never shadows the library of the same name on sys.path."""
