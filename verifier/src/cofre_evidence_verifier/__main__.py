"""`python -m cofre_evidence_verifier`: the same as the `cofre-verify` command."""

import sys

from cofre_evidence_verifier.cli import main

sys.exit(main())
