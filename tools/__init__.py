"""Build-time tools (the Lambda package); they never ship in it."""
