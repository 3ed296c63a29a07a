"""Reports -> text. console.py is the only module that imports rich; jsonout.py writes plain JSON."""
