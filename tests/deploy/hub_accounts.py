"""The accounts of the fake Hugging Face Hub (a module of its own: every test folder has a conftest)."""

ALICE_TOKEN = "hf_aliceWRITEtoken0123456789abcdefXYZ"
ALICE_READ_TOKEN = "hf_aliceREADtoken0123456789abcdefXYZ"
BOB_TOKEN = "hf_bobWRITEtoken0123456789abcdefXYZ"
