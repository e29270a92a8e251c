from faextract.cli import main

main()
