from rsa_service.cli import main

main()
