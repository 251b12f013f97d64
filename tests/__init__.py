"""botd2's tests, run by trial: C{trial tests}."""
