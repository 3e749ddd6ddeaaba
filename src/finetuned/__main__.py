from finetuned.cli.app import main

main()
