from medledger.cli.main import main

main()
