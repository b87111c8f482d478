from dgemma_cli.app import main

main()
